"""Time FunASR SenseVoiceSmall on wav files cut into fixed-length segments (default 30 s), batched.

Reports JSON on stdout: per-run milliseconds for feature extraction + forward + decode
(`AutoModel.inference` on a list of numpy segments), audio seconds, and the real-time factor
(compute seconds / audio seconds). Used to compare the Rust port's speed with the reference.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch


def load_segments(wavs: list[Path], segment_s: float) -> list[np.ndarray]:
    from funasr.utils.load_utils import load_audio_text_image_video

    seg = int(segment_s * 16000)
    out = []
    for w in wavs:
        audio = load_audio_text_image_video(str(w), fs=16000).numpy().astype(np.float32)
        out += [audio[i : i + seg] for i in range(0, len(audio), seg) if len(audio[i : i + seg]) >= 400]
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(model_dir: Path, wavs: list[Path], device: str, segment_s: float, batch_size: int, repeat: int) -> None:
    from funasr_ref import load_automodel

    if model_dir is None or not wavs:
        raise SystemExit("--bench needs --model DIR and at least one wav")
    m = load_automodel(model_dir, device)
    segments = load_segments(wavs, segment_s)
    audio_s = sum(len(s) for s in segments) / 16000
    m.generate(input=segments[:batch_size], batch_size=batch_size, language="auto", use_itn=False)  # warm-up
    runs = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        res = m.generate(input=segments, batch_size=batch_size, language="auto", use_itn=False)
        _sync(device)
        runs.append((time.perf_counter() - t0) * 1000)
    best = min(runs)
    report = {
        "device": device, "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "model": str(model_dir), "wavs": [str(w) for w in wavs], "segment_s": segment_s,
        "segments": len(segments), "batch_size": batch_size, "audio_s": round(audio_s, 3),
        "runs_ms": [round(r, 2) for r in runs], "best_ms": round(best, 2),
        "rtf": round(best / 1000 / audio_s, 5), "x_realtime": round(audio_s / (best / 1000), 1),
        "peak_mem_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
        "first_text": res[0]["text"][:80] if res else "",
    }
    print(json.dumps(report, ensure_ascii=False, indent=1))
