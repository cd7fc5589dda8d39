#!/usr/bin/env python3
"""Independent checks of the committed fixtures (run after generate.py).

Recomputes features with torchaudio's Kaldi fbank + a plain-loop LFR + am.mvn (spec §2), the greedy ids
from the stored logits, and re-runs the stored tiny model with a fresh AutoModel."""

import json
import math
import re
import sys
import wave
from pathlib import Path

import numpy as np
import torch
import torchaudio
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from funasr_ref import LayerTaps, load_automodel  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "sensevoice"


def cmvn(path: Path):
    lines = path.read_text().splitlines()
    vals = []
    for i, line in enumerate(lines):
        if line.startswith("<AddShift>") or line.startswith("<Rescale>"):
            vals.append(torch.tensor([float(x) for x in lines[i + 1].split()[3:-1]]))
    return vals[0], vals[1]


def features(wav: Path, mvn: Path) -> torch.Tensor:
    # torchaudio 2.11's load() needs torchcodec; read the PCM directly (FunASR falls back to soundfile).
    with wave.open(str(wav)) as w:
        sr = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]
    fb = torchaudio.compliance.kaldi.fbank(audio * 32768, num_mel_bins=80, frame_length=25, frame_shift=10,
                                           dither=0.0, energy_floor=0.0, window_type="hamming",
                                           sample_frequency=sr, snip_edges=True)
    t = fb.shape[0]
    padded = torch.cat([fb[:1].repeat(3, 1), fb])
    rows = []
    for i in range(math.ceil(t / 6)):
        chunk = padded[6 * i : 6 * i + 7]
        if chunk.shape[0] < 7:
            chunk = torch.cat([chunk, padded[-1:].repeat(7 - chunk.shape[0], 1)])
        rows.append(chunk.reshape(-1))
    shift, scale = cmvn(mvn)
    return (torch.stack(rows) + shift) * scale


def main() -> None:
    ref = json.loads((DATA / "reference.json").read_text())
    ts = load_file(str(DATA / "reference.safetensors"))
    pt = torch.load(DATA / "tiny" / "model.pt")
    st = load_file(str(DATA / "tiny" / "model.safetensors"))
    assert sorted(pt) == sorted(st) and all(torch.equal(pt[k], st[k]) for k in pt), "model.pt != safetensors"
    m = load_automodel(DATA / "tiny", "cpu")
    for stem, clip in ref["clips"].items():
        feats = features(DATA / "audio" / f"{stem}.wav", DATA / "tiny" / "am.mvn")
        t = 1 + (clip["num_samples"] - 400) // 160
        assert ts[f"{stem}/feats"].shape == (math.ceil(t / 6), 560), stem
        fdiff = float((feats - ts[f"{stem}/feats"]).abs().max())
        logits = ts[f"{stem}/logits"]
        ids = [int(i) for i in torch.unique_consecutive(logits.argmax(-1)) if int(i) != 0]
        assert ids == clip["greedy_ids"], stem
        for key, text in clip["generate"].items():
            assert len(re.findall(r"^(<\|[^|]+\|>){4}", text)) == 1, (stem, key, text)
        with LayerTaps(m.model) as taps:
            m.generate(input=str(DATA / "audio" / f"{stem}.wav"), language="auto", use_itn=False)
        rerun = max(float((taps.out[k][0] - ts[f"{stem}/{k}"]).abs().max()) for k in taps.out)
        print(f"{stem}: feats {tuple(feats.shape)} max|torchaudio+loop - stored| = {fdiff:.2e}; "
              f"re-run max diff {rerun:.1e}; {len(ids)} ids; text starts with 4 tags")
        assert fdiff < 1e-3 and rerun == 0.0
    print("ok")


if __name__ == "__main__":
    main()
