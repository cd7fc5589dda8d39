"""Write a 16 kHz mono 16-bit WAV of SECONDS seconds made of the committed speech clips, in sorted
order, repeated: the same input for FunASR and for our benchmarks.

    python3 tools/gpu/make_wav.py OUT.wav SECONDS
"""

import sys
import wave
from pathlib import Path

clips = sorted((Path(__file__).resolve().parents[2] / "tests/data/sensevoice/audio").glob("*.wav"))
frames = b""
for clip in clips:
    with wave.open(str(clip)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        frames += w.readframes(w.getnframes())
need = int(float(sys.argv[2]) * 16000) * 2
data = (frames * (need // len(frames) + 1))[:need]
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(data)
