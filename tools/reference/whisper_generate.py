#!/usr/bin/env python3
"""Whisper reference fixtures: a random-weight Whisper in the Hugging Face layout and what
transformers' WhisperForConditionalGeneration computes with it.

Writes OUT/model/ (config.json, generation_config.json, tokenizer.json, model.safetensors,
preprocessor_config.json) and OUT/reference.safetensors + OUT/reference.json:

  {clip}/features          (n_mels, 3000)   WhisperFeatureExtractor's input_features
  {clip}/encoder           (1500, d_model)  encoder last hidden state
  {clip}/{case}/logits     (T, vocab)       decoder logits, teacher-forced on prompt + greedy ids
  mel_filters              (201, n_mels)    the feature extractor's filters

reference.json holds, per clip and case (language / task / timestamps), the prompt, the greedy
ids generate() returned (prompt left out), the detected language and the decoded text; and per
clip `f32_vs_f64`: how far the float32 encoder output and logits are from the same model run in
float64, as max |f32 - f64| / max(max |f64|, 1).

Presets: `shrunk` (the default; whisper-tiny's architecture with every width, depth and the
vocabulary shrunk, about 2 MB, committed as tests/data/whisper), `tiny` and `base` (the real
configs of openai/whisper-tiny and -base, full vocabulary, random weights; for benchmarks).

Run: /work/venv-ref/bin/python tools/reference/whisper_generate.py [--preset shrunk] [--out DIR]
"""

import argparse
import copy
import json
import os
import time
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)
from transformers.generation import GenerationMixin, LogitsProcessorList
from transformers.models.whisper.tokenization_whisper import LANGUAGES

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "tests" / "data" / "sensevoice" / "audio"

# openai/whisper-tiny and -base config.json values (architecture only).
PRESETS = {
    "tiny": dict(d_model=384, encoder_layers=4, decoder_layers=4, heads=6, n_mels=80, vocab_text=50257),
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, heads=8, n_mels=80, vocab_text=50257),
    "shrunk": dict(d_model=64, encoder_layers=2, decoder_layers=2, heads=4, n_mels=80, vocab_text=400),
}
MAX_TARGET_POSITIONS = 448
N_TIMESTAMPS = 1501


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer(n_text):
    """A byte-level BPE vocabulary of n_text tokens (the 256 bytes, then two-character tokens),
    followed by Whisper's special tokens in Whisper's order."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for a in chars:
        for b in chars:
            if len(vocab) >= n_text:
                break
            vocab.setdefault(a + b, len(vocab))
        if len(vocab) >= n_text:
            break
    langs = list(LANGUAGES)[:99]  # multilingual v1/v2 models (large-v3 adds yue)
    specials = ["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in langs]
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                 "<|notimestamps|>"]
    specials += [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)]
    tok = Tokenizer(BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    ids = {s: tok.token_to_id(s) for s in specials}
    assert ids["<|endoftext|>"] == n_text and tok.get_vocab_size() == n_text + len(specials)
    return tok, ids, langs


def make_model(preset, seed):
    p = PRESETS[preset]
    tok, ids, langs = build_tokenizer(p["vocab_text"])
    vocab_size = tok.get_vocab_size()
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=p["n_mels"],
        d_model=p["d_model"],
        encoder_layers=p["encoder_layers"],
        decoder_layers=p["decoder_layers"],
        encoder_attention_heads=p["heads"],
        decoder_attention_heads=p["heads"],
        encoder_ffn_dim=4 * p["d_model"],
        decoder_ffn_dim=4 * p["d_model"],
        max_source_positions=1500,
        max_target_positions=MAX_TARGET_POSITIONS,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        # Wider random weights than the default 0.02, so that the logits are peaked, the audio
        # matters and greedy decoding mixes text and timestamps instead of repeating one token.
        init_std=0.3,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    # Random biases and LayerNorm gains too (they start at 0 and 1), so that a bias or gain
    # loaded into the wrong place shows. The encoder's positions stay sinusoids, as in every
    # checkpoint.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "layer_norm" in name and name.endswith(".weight"):
                p.normal_(1.0, 0.1)
    space = tok.token_to_id("Ġ")
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=MAX_TARGET_POSITIONS,
        is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in langs},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        # As in openai/whisper-*: a few text tokens plus translate..nospeech.
        suppress_tokens=[1, 2, 7, 8, 9, 10, 14, 25]
        + [ids[t] for t in ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>"]],
        begin_suppress_tokens=[space, eot],
        max_initial_timestamp_index=50,
    )
    model.generation_config = gen
    return model, tok, ids


def read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float32) / 32768.0


CASES = [
    # name, language (None: detect), task, timestamps
    ("detect_transcribe_ts", None, "transcribe", True),
    ("en_transcribe_nots", "en", "transcribe", False),
    ("de_translate_ts", "de", "translate", True),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shrunk", choices=sorted(PRESETS))
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "whisper"))
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--bench", action="store_true", help="time generate() on the clips instead")
    ap.add_argument("--model-only", action="store_true", help="write OUT/model only, no references")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("wavs", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    out = Path(args.out)
    model, tok, ids = make_model(args.preset, args.seed)
    fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    wavs = [Path(w) for w in args.wavs] or sorted(AUDIO.glob("*.wav"))

    if args.bench:
        return bench(model, fe, wavs, args)

    mdir = out / "model"
    mdir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(mdir)
    model.generation_config.save_pretrained(mdir)
    fe.save_pretrained(mdir)
    tok.save(str(mdir / "tokenizer.json"))
    # Only the checkpoint's own tensors (proj_out is tied to embed_tokens and not stored).
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "proj_out.weight"}
    save_file(state, mdir / "model.safetensors", metadata={"format": "pt"})
    if args.model_only:
        return

    model64 = copy.deepcopy(model).double()
    tensors = {"mel_filters": torch.from_numpy(np.asarray(fe.mel_filters, dtype=np.float32))}
    meta = {
        "preset": args.preset,
        "seed": args.seed,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "max_new_tokens": args.max_new_tokens,
        "special": {k: v for k, v in ids.items() if not k[2:3].isdigit()},
        "clips": {},
    }
    for wav in wavs:
        name = wav.stem
        audio = read_wav(wav)[: 30 * 16000]
        feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
        tensors[f"{name}/features"] = feats[0].contiguous()
        with torch.no_grad():
            enc = model.model.encoder(feats).last_hidden_state
        tensors[f"{name}/encoder"] = enc[0].contiguous()
        clip = {"samples": len(audio), "cases": {}}
        # The reference's own f32 rounding error: the same model and inputs in float64. Two f32
        # implementations can differ by about twice this much, and it grows with width and
        # depth, so the parity tests bound our difference by it (see tests/whisper_parity.rs).
        with torch.no_grad():
            enc64 = model64.model.encoder(feats.double()).last_hidden_state
        clip["f32_vs_f64"] = {"encoder": rel_error(enc, enc64), "logits": {}}
        for case, language, task, timestamps in CASES:
            with torch.no_grad():
                gen = model.generate(
                    feats,
                    language=language,
                    task=task,
                    return_timestamps=timestamps,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    return_dict_in_generate=True,
                    return_segments=timestamps,
                )
            if timestamps:
                # With timestamps generate() runs OpenAI's seek loop: when a window's decode ends
                # inside a segment it decodes again from the last timestamp. The first window's
                # raw greedy decode (prompt, ids, end token) is what one window gives; that is
                # the contract here (the app cuts audio into <= 30 s windows at pauses).
                segments = gen["segments"][0]
                assert segments, f"{name}/{case}: no timestamped segment; pick another seed"
                seq = segments[0]["result"]["sequences"].tolist()
                returned = gen["sequences"][0].tolist()
            else:
                # Without timestamps generate() also decodes the window again when the first
                # decode ends without the end token (its output is then both passes), so the
                # first window is decoded here with transformers' own greedy search and the
                # logits processors WhisperForConditionalGeneration builds for it.
                returned = gen["sequences"][0].tolist()
                seq = one_window(model, feats, ids, language, task, args.max_new_tokens)
            lang_id = model.detect_language(input_features=feats).item() if language is None else ids[f"<|{language}|>"]
            prompt = [ids["<|startoftranscript|>"], lang_id, ids[f"<|{task}|>"]]
            if not timestamps:
                prompt.append(ids["<|notimestamps|>"])
            assert seq[: len(prompt)] == prompt, (name, case, seq[:5], prompt)
            generated = seq[len(prompt):]
            full = prompt + generated
            with torch.no_grad():
                logits = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([full])).logits
            tensors[f"{name}/{case}/logits"] = logits[0].contiguous()
            with torch.no_grad():
                logits64 = model64(encoder_outputs=(enc64,), decoder_input_ids=torch.tensor([full])).logits
            clip["f32_vs_f64"]["logits"][case] = rel_error(logits, logits64)
            clip["cases"][case] = {
                "language": language,
                "task": task,
                "timestamps": timestamps,
                "prompt": prompt,
                "detected_language": tok.id_to_token(lang_id),
                "returned": returned,
                "ids": generated,
                "text": tok.decode(generated, skip_special_tokens=True),
            }
        meta["clips"][name] = clip
    save_file(tensors, out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: {c: len(v["ids"]) for c, v in m["cases"].items()} for k, m in meta["clips"].items()}))


def rel_error(f32, f64):
    """max |f32 - f64| / max(max |f64|, 1): the measure the parity tests bound."""
    d = float((f32.double() - f64).abs().max())
    return d / max(float(f64.abs().max()), 1.0)


def one_window(model, feats, ids, language, task, max_new_tokens):
    """Greedy decode of one window without timestamps: GenerationMixin.generate with the
    processors of WhisperGenerationMixin._retrieve_logit_processors (begin-suppress, suppress)."""
    prompt = [ids["<|startoftranscript|>"], ids[f"<|{language}|>"], ids[f"<|{task}|>"], ids["<|notimestamps|>"]]
    config = copy.deepcopy(model.generation_config)
    config.return_timestamps = False
    config.no_speech_threshold = None
    processors = model._retrieve_logit_processors(config, None, len(prompt), 1, "cpu")
    with torch.no_grad():
        out = GenerationMixin.generate(
            model,
            feats,
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
            decoder_input_ids=torch.tensor([prompt]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
    return out[0].tolist()


def bench(model, fe, wavs, args):
    """Times feature extraction + generate() per clip: language given, no timestamps (one
    greedy pass per clip; with timestamps generate() may decode a window again from its last
    timestamp), max_new_tokens tokens unless the end token comes first."""
    clips = [read_wav(w)[: 30 * 16000] for w in wavs]
    audio_s = sum(len(c) for c in clips) / 16000
    runs = []
    tokens = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        tokens = 0
        for audio in clips:
            feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
            with torch.no_grad():
                gen = model.generate(feats, language="en", task="transcribe", return_timestamps=False,
                                     max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1)
            tokens += gen.shape[-1]
        runs.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"preset": args.preset, "clips": len(clips), "audio_s": audio_s, "tokens": tokens,
                      "runs_ms": runs, "best_ms": min(runs), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
