"""Long WAVs for tools/bench/rss.sh where sox is not installed (16 kHz mono s16 in, out).

    python3 tools/bench/wav_concat.py unit OUT.wav PAD_S IN.wav...   # INs joined, PAD_S of silence after
    python3 tools/bench/wav_concat.py repeat IN.wav OUT.wav TIMES    # IN, then TIMES more copies

Prints the output's length in seconds.
"""

import sys
import wave


def params(path: str) -> tuple[int, int, int]:
    with wave.open(path, "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate()


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "unit":
        out, pad_s, *inputs = args
        p = params(inputs[0])
        frames = b""
        for path in inputs:
            if params(path) != p:
                sys.exit(f"{path}: format {params(path)} differs from {inputs[0]}'s {p}")
            with wave.open(path, "rb") as w:
                frames += w.readframes(w.getnframes())
        frames += b"\0" * (round(float(pad_s) * p[2]) * p[0] * p[1])
        chunks, times = [frames], 1
    elif mode == "repeat":
        src, out, reps = args
        p = params(src)
        with wave.open(src, "rb") as w:
            chunks, times = [w.readframes(w.getnframes())], int(reps) + 1
    else:
        sys.exit(f"unknown mode {mode}")
    with wave.open(out, "wb") as w:
        w.setnchannels(p[0])
        w.setsampwidth(p[1])
        w.setframerate(p[2])
        for _ in range(times):
            for c in chunks:
                w.writeframes(c)
        n = w.getnframes()
    print(n / p[2])


if __name__ == "__main__":
    main()
