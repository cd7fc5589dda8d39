#!/usr/bin/env python3
"""Live transcription latency of `gpuscribe listen --from-wav` (real-time pace), measured from
outside the process, and its final text against `gpuscribe transcribe`.

    python3 tools/bench/live_latency.py BIN MODEL DEVICE [WAV...]
    # e.g. target/release/gpuscribe /work/fullcpu/model cpu
    #      target/release/gpuscribe ~/models/SenseVoiceSmall cuda:0   (a --features cuda build)

BIN is the `gpuscribe` executable (its `gpuscribe-worker` next to it), MODEL a model folder,
DEVICE `cpu` or `cuda:N`. Without WAVs it plays the committed FunASR clips of
tests/data/sensevoice/audio with 0.5 s of silence before and 1 s after each (9.9 s, the layout
of tests/live_pipeline.rs), written to a temporary folder. Standard library only.

For every line `listen --json` prints, the script notes when it arrived (monotonic clock; the
audio's time 0 is when `listen` says "playing"). Reported per final line: arrival minus the
utterance's end in the audio (`end`, which the voice detector knows 320 ms after the last voiced
frame), and minus the last voiced frame (`end` - 0.32 s); per utterance, the gaps between the
lines shown while it was spoken: from its start (in the audio) through the partials that came
before its last voiced frame, the last gap ending at that frame (or at the final, if that came
first); after the last voiced frame nobody is speaking and the final's latency is what counts.
`listen --timings` adds each transcription job's clip, wall and worker time to stderr, printed
after each file's lines. Then each
final's stretch of audio is cut out and run through `gpuscribe transcribe` (the offline path):
live finals must equal those texts exactly; the whole file's transcript is printed beside the
joined finals (it is cut differently, so it may differ). The last line is a JSON summary.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIPS = ["en_short", "zh_mid", "ja_long"]
HANGOVER_S = 0.32
RATE = 16_000


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, RATE):
            sys.exit(f"{path}: need 16 kHz mono 16-bit PCM")
        return w.readframes(w.getnframes())


def write_pcm(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)


def spoken_wav(folder: Path) -> Path:
    pcm = b"\0\0" * (RATE // 2)
    for name in CLIPS:
        pcm += read_pcm(REPO / "tests/data/sensevoice/audio" / f"{name}.wav")
        pcm += b"\0\0" * RATE
    path = folder / "spoken.wav"
    write_pcm(path, pcm)
    return path


def device_args(device: str) -> list[str]:
    return ["--device", device]


def listen(bin_path: str, model: str, device: str, wav: Path) -> dict:
    cmd = [bin_path, *device_args(device), "listen", "--json", "--timings", "--model-dir", model,
           "--from-wav", str(wav)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", bufsize=1)
    started: list[float] = []
    stderr_lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("playing ") and not started:
                started.append(time.monotonic())
            stderr_lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read_stderr, name="listen-stderr", daemon=True)
    reader.start()
    lines: list[tuple[float, dict]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.monotonic(), json.loads(line)))
    code = proc.wait()
    reader.join(timeout=10)
    if code != 0 or not started:
        sys.exit(f"listen failed ({code}):\n" + "\n".join(stderr_lines))
    return {"t0": started[0], "lines": lines, "stderr": stderr_lines}


def transcribe(bin_path: str, model: str, device: str, wavs: list[Path]) -> list[str]:
    cmd = [bin_path, *device_args(device), "transcribe", "--format", "json", "--no-history",
           "--model-dir", model, *map(str, wavs)]
    out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    if out.returncode != 0:
        sys.exit(f"transcribe failed ({out.returncode}):\n{out.stderr}")
    by_path = {}
    decoder = json.JSONDecoder()
    text = out.stdout.strip()
    while text:
        obj, end = decoder.raw_decode(text)
        for item in obj if isinstance(obj, list) else [obj]:
            by_path[item["path"]] = item["raw_text"]
        text = text[end:].strip()
    return [by_path[str(w)] for w in wavs]


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min_ms": round(min(values) * 1000),
            "median_ms": round(statistics.median(values) * 1000),
            "max_ms": round(max(values) * 1000)}


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    bin_path, model, device = sys.argv[1:4]
    with tempfile.TemporaryDirectory(prefix="live-latency-") as tmp:
        folder = Path(tmp)
        wavs = [Path(p) for p in sys.argv[4:]] or [spoken_wav(folder)]
        after_end, after_voice, gaps, mismatches = [], [], [], 0
        partials = finals = 0
        for wav in wavs:
            run = listen(bin_path, model, device, wav)
            t0 = run["t0"]
            print(f"{wav.name}:")
            for line in run["stderr"]:
                print(f"  | {line}")
            final_lines = [(at, l) for at, l in run["lines"] if not l["partial"]]
            partials += sum(1 for _, l in run["lines"] if l["partial"])
            finals += len(final_lines)
            for at, line in final_lines:
                late = at - t0 - line["end"]
                after_end.append(late)
                after_voice.append(late + HANGOVER_S)
                shown = [a for a, l in run["lines"] if l["utterance"] == line["utterance"]]
                spoken_until = t0 + line["end"] - HANGOVER_S
                last = t0 + line["start"]
                for a in shown:
                    if a >= spoken_until:
                        break
                    gaps.append(a - last)
                    last = a
                if last < spoken_until:
                    gaps.append(min(at, spoken_until) - last)
                print(f"  {line['start']:6.2f}–{line['end']:6.2f} s  final {late * 1000:5.0f} ms "
                      f"after the utterance's end ({(late + HANGOVER_S) * 1000:5.0f} ms after its "
                      f"last voiced frame), {len(shown) - 1} partial(s) before it")
            # The offline path on each final's stretch, and on the whole file.
            pcm = read_pcm(wav)
            cuts = []
            for i, (_, line) in enumerate(final_lines):
                a = round(line["start"] * RATE) * 2
                b = min(round(line["end"] * RATE) * 2, len(pcm))
                cut = folder / f"{wav.stem}-cut{i}.wav"
                write_pcm(cut, pcm[a:b])
                cuts.append(cut)
            offline = transcribe(bin_path, model, device, cuts + [wav])
            for (_, line), text in zip(final_lines, offline):
                if line["raw_text"] != text:
                    mismatches += 1
                    print(f"  MISMATCH {line['start']:.2f}–{line['end']:.2f} s: live "
                          f"{line['raw_text']!r} vs transcribe {text!r}")
            joined = " | ".join(l["raw_text"] for _, l in final_lines)
            print(f"  live finals: {joined[:160]}")
            print(f"  transcribe (whole file): {offline[-1][:160]}")
        summary = {
            "device": device, "model": model, "files": [str(w) for w in wavs],
            "finals": finals, "partials": partials,
            "utterance_end_to_final": stats(after_end),
            "last_voiced_frame_to_final": stats(after_voice),
            "gap_between_lines_while_speaking": stats(gaps),
            "finals_differing_from_transcribe_of_their_cut": mismatches,
            "cpus": os.cpu_count(), "loadavg_1m_at_end": os.getloadavg()[0],
        }
        print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
