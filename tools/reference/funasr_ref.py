"""Thin helpers around FunASR's own classes: model folder writing, AutoModel loading, forward hooks.

Everything here calls FunASR / torch code paths unchanged; the point is to record what they do.
"""

import json
import re
import shutil
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

SPEC_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference"
BPE_NAME = "chn_jpn_yue_eng_ko_spectok.bpe.model"

# configuration.json of the release (FunASR docs/tutorial/Tables.md, spec §8).
CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "model_name_in_hub": {"ms": "", "hf": ""},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"bpemodel": BPE_NAME},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}


def reference_file(name: str, override: Path | None) -> Path:
    """The release config.yaml / am.mvn: next to this script's repo (../shared/reference) or overridden."""
    if override is not None:
        return override / name
    here = Path(__file__).resolve().parent / "release" / name
    return here if here.exists() else SPEC_DIR / name


def shrink_config(release_yaml: str, encoder_conf: dict) -> str:
    """Replace encoder_conf values in the release yaml text, keeping its layout byte-for-byte elsewhere."""
    out = release_yaml
    for key, value in encoder_conf.items():
        out, n = re.subn(rf"(\n    {key}: )\S+", rf"\g<1>{value}", out, count=1)
        if n != 1:
            raise ValueError(f"config.yaml: encoder_conf key {key} not found")
    return out


def encoder_conf_from_yaml(path: Path) -> dict:
    """encoder_conf exactly as FunASR reads it (OmegaConf/yaml)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return dict(yaml.safe_load(f)["encoder_conf"])


def fixed_torch_save(state: OrderedDict, path: Path) -> None:
    """torch.save, then make `.data/serialization_id` deterministic.

    torch >= 2.1 writes a 40-digit id: 20 digits of combined CRC + 20 random digits. The random half is
    replaced with zeros and the record's CRC-32 is patched in the local and central headers, so the file
    is byte-for-byte reproducible and still loads with torch.load / candle."""
    torch.save(state, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".data/serialization_id"))
        old = z.read(info)
    new = old[:20] + b"0" * (len(old) - 20)
    crc = zlib.crc32(new).to_bytes(4, "little")
    name = info.filename.encode()
    local = info.header_offset
    name_len = int.from_bytes(data[local + 26 : local + 28], "little")
    extra_len = int.from_bytes(data[local + 28 : local + 30], "little")
    body = local + 30 + name_len + extra_len
    if data[body : body + len(old)] != old or info.compress_type != zipfile.ZIP_STORED:
        raise RuntimeError(f"{path}: unexpected zip layout for serialization_id")
    data[body : body + len(new)] = new
    data[local + 14 : local + 18] = crc
    if int.from_bytes(data[local + 6 : local + 8], "little") & 0x8:
        # CRC lives in the data descriptor that follows the record (optional PK\x07\x08 signature).
        desc = body + len(old)
        desc += 4 if data[desc : desc + 4] == b"PK\x07\x08" else 0
        data[desc : desc + 4] = crc
    central = data.find(name, local + 30 + name_len)
    while central != -1 and data[central - 46 : central - 42] != b"PK\x01\x02":
        central = data.find(name, central + 1)
    if central == -1:
        raise RuntimeError(f"{path}: central directory entry for serialization_id not found")
    data[central - 46 + 16 : central - 46 + 20] = crc
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z:
        if z.testzip() is not None:
            raise RuntimeError(f"{path}: CRC patch failed")


def write_model_folder(folder: Path, config_text: str, state: OrderedDict, bpe_bytes: bytes, am_mvn: Path,
                       safetensors: bool = True) -> None:
    """Release-style folder: config.yaml, configuration.json, model.pt, am.mvn, bpe model
    (+ model.safetensors with the same tensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_text, encoding="utf-8")
    (folder / "configuration.json").write_text(json.dumps(CONFIGURATION_JSON, indent=2) + "\n")
    shutil.copyfile(am_mvn, folder / "am.mvn")
    (folder / BPE_NAME).write_bytes(bpe_bytes)
    fixed_torch_save(state, folder / "model.pt")
    if safetensors:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def load_automodel(folder: Path, device: str):
    """AutoModel on a local folder with dither 0 (the WavFrontend default is 1.0, spec §2.5)."""
    from funasr import AutoModel

    return AutoModel(model=str(folder), device=device, disable_update=True, disable_pbar=True,
                     disable_log=True, frontend_conf={"dither": 0.0})


class LayerTaps:
    """Forward hooks that keep the last output of selected encoder modules (batch kept, cloned to CPU)."""

    def __init__(self, model):
        enc = model.encoder
        self.modules = [("encoder_input", enc.embed)]
        self.modules += [(f"encoders0.{i}", m) for i, m in enumerate(enc.encoders0)]
        self.modules += [(f"encoders.{i}", m) for i, m in enumerate(enc.encoders)]
        self.modules += [("after_norm", enc.after_norm)]
        self.modules += [(f"tp_encoders.{i}", m) for i, m in enumerate(enc.tp_encoders)]
        self.modules += [("tp_norm", enc.tp_norm), ("logits", model.ctc.ctc_lo)]
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []

    def __enter__(self):
        for name, module in self.modules:
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name):
        def hook(_module, _inputs, output):
            t = output[0] if isinstance(output, tuple) else output
            self.out[name] = t.detach().float().cpu().clone()

        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
