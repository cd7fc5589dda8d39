"""Speech-like test clips: espeak-ng speech, resampled by sox to 16 kHz mono 16-bit, cut or zero-padded
to an exact sample count (odd counts on purpose, so the fbank framing has a remainder)."""

import subprocess
import wave
from pathlib import Path

import numpy as np

# (stem, espeak-ng voice, words per minute, text, exact number of 16 kHz samples)
CLIPS = [
    ("en_short", "en-us", 175, "Hello world.", 20917),
    ("zh_mid", "cmn", 150, "你好世界", 33611),
    ("ja_long", "ja", 130, "こんにちは、テストです。", 48013),
]


def synthesize(voice: str, wpm: int, text: str, num_samples: int, tmp_dir: Path) -> np.ndarray:
    """espeak-ng -> sox (rate 16k, mono, s16, no dither) -> int16 array of exactly num_samples."""
    raw_wav = tmp_dir / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw_wav), text], check=True)
    # -D: no dither, so the conversion is deterministic.
    pcm = subprocess.run(
        ["sox", "-D", str(raw_wav), "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", "16000",
         "-"],
        check=True, capture_output=True,
    ).stdout
    samples = np.frombuffer(pcm, dtype="<i2")
    out = np.zeros(num_samples, dtype="<i2")
    n = min(num_samples, len(samples))
    out[:n] = samples[:n]
    return out


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Plain RIFF/WAVE PCM 16-bit mono 16 kHz (no extra chunks)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.astype("<i2").tobytes())


def make_clips(audio_dir: Path, tmp_dir: Path) -> list[Path]:
    """Writes every clip of CLIPS into audio_dir; returns the wav paths in CLIPS order."""
    audio_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, voice, wpm, text, n in CLIPS:
        path = audio_dir / f"{stem}.wav"
        write_wav(path, synthesize(voice, wpm, text, n, tmp_dir))
        paths.append(path)
    return paths
