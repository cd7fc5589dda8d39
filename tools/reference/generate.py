#!/usr/bin/env python3
"""Generate the SenseVoice reference fixtures (tests/data/sensevoice/) with FunASR's own code.

Contract: FIXTURES.md. Everything runs through funasr==1.4.16 classes (SenseVoiceSmall, AutoModel,
WavFrontend, SentencepiecesTokenizer, rich_transcription_postprocess) with dither 0 and fixed seeds.

    python3 tools/reference/generate.py                       # tiny fixtures -> tests/data/sensevoice
    python3 tools/reference/generate.py --full --out DIR      # release-size random model (not committed)
    python3 tools/reference/generate.py --bench --model DIR --device cuda a.wav b.wav
"""

import argparse
import json
import math
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audio_clips  # noqa: E402
import long_audio  # noqa: E402
import toy_spm  # noqa: E402
from funasr_ref import (  # noqa: E402
    BPE_NAME, LayerTaps, encoder_conf_from_yaml, load_automodel, reference_file, shrink_config,
    write_model_folder,
)

REPO = Path(__file__).resolve().parents[2]
TINY_ENCODER = dict(output_size=64, attention_heads=4, linear_units=128, num_blocks=3, tp_blocks=2,
                    kernel_size=11, sanm_shfit=0)
TINY_VOCAB = 500
LANGS = ["auto", "zh", "en", "yue", "ja", "ko"]
SEED = 20240917

# What the fitted CTC head of the tiny model emits on the 4 prompt frames, per clip (spec §3.1:
# frame 0 = language, 1 = emotion, 2 = event, 3 = itn). "auto" resolves to the clip's spoken language.
CLIP_TAGS = {
    "en_short": ("<|en|>", "<|NEUTRAL|>", "<|Speech|>"),
    "zh_mid": ("<|zh|>", "<|HAPPY|>", "<|Laughter|>"),
    "ja_long": ("<|ja|>", "<|SAD|>", "<|BGM|>"),
}
# Rigged forced-alignment case (spec §6.1): text pieces placed at chosen speech frames (after the prompt).
RIG_CLIP = "ja_long"
RIG_TEXT = "hello wonderful world你好"
# hello ▁w o nd er ful ▁world 你好: adjacent pieces without a blank between them (hello|▁w, nd|er|ful),
# multi-frame pieces, and ASCII pieces that post() merges into one word.
RIG_FRAMES = [(10, 13), (13, 14), (16, 17), (17, 19), (19, 20), (20, 21), (24, 27), (40, 42)]


def build_model(encoder_conf: dict, vocab_size: int, seed: int):
    """Random SenseVoiceSmall (FunASR class). LayerNorm gains/biases are randomised too, so a port that
    swaps or ignores them fails."""
    from funasr.models.sense_voice.model import SenseVoiceSmall

    torch.manual_seed(seed)
    conf = dict(encoder_conf)
    for k in ("dropout_rate", "positional_dropout_rate", "attention_dropout_rate"):
        conf.setdefault(k, 0.1)
    model = SenseVoiceSmall(encoder="SenseVoiceEncoderSmall", encoder_conf=conf, input_size=560,
                            vocab_size=vocab_size).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name or "_norm." in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    return model


def state_of(model) -> OrderedDict:
    return OrderedDict((k, v.detach().cpu().contiguous().clone()) for k, v in model.state_dict().items())


def run_clip(m, wav: Path, language="auto", use_itn=False, **kw):
    """m.generate on one file, returning (result dict, tapped tensors with batch dim dropped)."""
    with LayerTaps(m.model) as taps:
        res = m.generate(input=str(wav), language=language, use_itn=use_itn, **kw)[0]
    return res, {k: v[0] for k, v in taps.out.items()}


def greedy_ids(logits: torch.Tensor) -> list[int]:
    """FunASR inference(): argmax over all frames, unique_consecutive, drop blank 0."""
    ids = torch.unique_consecutive(logits.argmax(-1))
    return [int(i) for i in ids if int(i) != 0]


def fit_tag_head(m, wavs: dict, sp, steps: int = 600):
    """Fit ONLY ctc_lo so the prompt frames emit realistic tags (lang/emotion/event/itn) for every clip,
    language and itn setting, and speech frames never emit a tag. The encoder stays random."""
    specials = torch.tensor([sp.PieceToId(t) for t in toy_spm.SPECIAL_TOKENS])
    rows, targets, speech = [], [], []
    for stem, wav in wavs.items():
        lang_auto, emo, event = CLIP_TAGS[stem]
        for lang in LANGS:
            for itn in (False, True):
                _, taps = run_clip(m, wav, lang, itn)
                h = taps["tp_norm"]
                tags = [lang_auto if lang == "auto" else f"<|{lang}|>", emo, event,
                        "<|withitn|>" if itn else "<|woitn|>"]
                rows.append(h[:4])
                targets.append(torch.tensor([sp.PieceToId(t) for t in tags]))
                speech.append(h[4:])
    hp, tp, hs = torch.cat(rows), torch.cat(targets), torch.cat(speech)
    lin = m.model.ctc.ctc_lo
    w = lin.weight.detach().clone().requires_grad_(True)
    b = lin.bias.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=0.02)
    nonspecial = torch.ones(w.shape[0], dtype=torch.bool)
    nonspecial[specials] = False
    for _ in range(steps):
        opt.zero_grad()
        lp = hp @ w.T + b
        ls = hs @ w.T + b
        hinge = torch.relu(ls[:, specials].max(-1).values - ls[:, nonspecial].max(-1).values + 2.0)
        margin = torch.relu(lp.masked_fill(
            torch.nn.functional.one_hot(tp, w.shape[0]).bool(), -1e9).max(-1).values
            - lp.gather(1, tp[:, None])[:, 0] + 2.0)
        loss = torch.nn.functional.cross_entropy(lp, tp) + hinge.mean() + margin.mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)


def rig_head(h: torch.Tensor, frame_ids: list[int], vocab: int, seed: int):
    """Least-squares ctc_lo (weight [V,D], bias [V]) whose logits on encoder output h [T',D] are
    8*onehot(frame_ids) + small noise; exact when T' <= D+1 (spec §6.1 rigged head)."""
    g = torch.Generator().manual_seed(seed)
    target = 0.3 * torch.randn(h.shape[0], vocab, generator=g, dtype=torch.float64)
    target[torch.arange(h.shape[0]), torch.tensor(frame_ids)] = 8.0
    a = torch.cat([h.double(), torch.ones(h.shape[0], 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(a, target).solution  # [D+1, V]
    return sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()


def tokenizer_cases(sp, extra: list[list[int]], seed: int) -> list[dict]:
    """DecodeIds cases: specials, tag prefixes, CJK, runs of ▁, leading-space pieces, controls, random."""
    pid = sp.PieceToId
    n = sp.GetPieceSize()
    tags4 = [pid(t) for t in ("<|en|>", "<|NEUTRAL|>", "<|Speech|>", "<|woitn|>")]
    space = pid("▁")
    lead = [i for i in range(n) if sp.IdToPiece(i).startswith("▁") and len(sp.IdToPiece(i)) > 1][:6]
    cjk = [i for i in range(n) if any(ord(c) > 0x2E80 for c in sp.IdToPiece(i))][:8]
    plain = [i for i in range(n) if sp.IdToPiece(i).isascii() and sp.IdToPiece(i).isalpha()][:6]
    cases = [[pid(t)] for t in toy_spm.SPECIAL_TOKENS]
    cases += [tags4, tags4 + sp.EncodeAsIds("hello world"), tags4 + [lead[0], lead[1]],
              tags4 + [space, space, lead[0]], [space], [space, space, space], [space, space, lead[0]],
              [lead[0]], [lead[0], lead[1], plain[0]], [plain[0], lead[0]], cjk, [lead[0]] + cjk,
              cjk[:2] + [space] + cjk[2:4], [1, 2], [1, lead[0], 2, plain[0]], tags4[:2] + [2] + tags4[2:],
              [pid("<|zh|>")] + cjk[:3] + [pid("<|en|>"), lead[2]], tags4 + [space],
              [plain[1], space, space, space, plain[2], space],
              sp.EncodeAsIds("hello world你好 こんにちは 안녕하세요"),
              sp.EncodeAsIds("<|ja|><|SAD|><|BGM|><|withitn|>今日は")]
    g = np.random.default_rng(seed)
    for _ in range(8):
        cases.append([int(x) for x in g.integers(1, n, size=int(g.integers(1, 24)))])
    cases += extra
    return [{"ids": ids, "pieces": [sp.IdToPiece(i) for i in ids], "text": sp.DecodeIds(ids)} for ids in cases]


POSTPROCESS_GOLDENS = [
    "<|en|><|NEUTRAL|><|Speech|><|woitn|>hello world",
    "<|zh|><|HAPPY|><|Speech|><|withitn|>欢迎大家来体验达摩院推出的语音识别模型。",
    "<|en|><|HAPPY|><|Laughter|><|withitn|>Hello there.",
    "<|en|><|SAD|><|BGM|><|withitn|>First part. <|en|><|SAD|><|BGM|><|withitn|>Second part.",
    "<|ja|><|EMO_UNKNOWN|><|Cough|><|woitn|>",
    "<|en|><|ANGRY|><|Applause|><|withitn|>Stop. <|zh|><|NEUTRAL|><|Speech|><|withitn|>好的。",
    "<|nospeech|><|Event_UNK|><|woitn|>",
    "",
    "plain text without tags",
    "<|ko|><|SURPRISED|><|Sneeze|><|woitn|> 안녕 <|yue|><|FEARFUL|><|Cry|><|woitn|>你好",
    "<|en|><|DISGUSTED|><|Breath|><|withitn|>The. end",
    "<|en|><|NEUTRAL|><|Speech|><|woitn|>a <|en|><|HAPPY|><|Speech|><|woitn|>b <|en|><|HAPPY|><|BGM|><|woitn|>c",
    "<|zh|><|NEUTRAL|><|Sing|><|Speech_Noise|><|GBG|><|woitn|>歌",
]


def dump_clip(m, stem: str, wav: Path, tensors: dict, dims: dict) -> dict:
    """feats + per-layer outputs + logits for language auto / itn off, and generate() texts."""
    from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

    frontend = m.kwargs["frontend"]
    audio = load_audio_text_image_video(str(wav), fs=frontend.fs)
    feats, _ = extract_fbank([audio], data_type="sound", frontend=frontend)
    res, taps = run_clip(m, wav)
    enc_in = taps["encoder_input"]
    if enc_in.shape[0] != feats.shape[1] + 4:
        raise RuntimeError(f"{stem}: encoder input {tuple(enc_in.shape)} vs feats {tuple(feats.shape)}")
    # encoder_input must be [prompt; feats]*sqrt(d) + PE (spec §3.2): checks that the recorded feats are
    # what the model saw, and the PE formula ([sin|cos], depth 560, positions from 1).
    pos = torch.arange(1, enc_in.shape[0] + 1, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(280, dtype=torch.float32) * -(math.log(10000.0) / 279))
    pe = torch.cat([torch.sin(pos * inv), torch.cos(pos * inv)], 1)
    scale = dims["output_size"] ** 0.5
    pe_err = float((enc_in[4:] - (feats[0] * scale + pe[4:])).abs().max())
    if pe_err > 1e-3:
        raise RuntimeError(f"{stem}: encoder_input[4:] != feats*sqrt(d)+PE (max err {pe_err})")
    tensors[f"{stem}/feats"] = feats[0].float()
    for name, t in taps.items():
        tensors[f"{stem}/{name}"] = t
    ids = greedy_ids(taps["logits"])
    sp = m.kwargs["tokenizer"].sp
    if sp.DecodeIds(ids) != res["text"] and dims["strict"]:
        raise RuntimeError(f"{stem}: DecodeIds(greedy) != generate text")
    gen = {}
    for lang in LANGS:
        for itn in (False, True):
            key = lang + ("_itn" if itn else "")
            gen[key] = m.generate(input=str(wav), language=lang, use_itn=itn)[0]["text"]
    out = {"num_samples": int(audio.shape[0]), "num_lfr_frames": int(feats.shape[1]), "greedy_ids": ids,
           "greedy_pieces": [sp.IdToPiece(i) for i in ids], "generate": gen, "_pe_check": pe_err}
    # Forced-alignment timestamps on the (random-text) output. FunASR re-encodes the decoded text and
    # aligns those ids, which need not be the greedy ids; both are recorded.
    try:
        ts = m.generate(input=str(wav), language="auto", use_itn=False, output_timestamp=True)[0]
        tokens = sp.EncodeAsPieces(ts["text"])[4:]
        aligned = [x for t in sp.EncodeAsIds(tokens) for x in (t or [124])]
        out["timestamp"] = {"text": ts["text"], "timestamp": ts.get("timestamp"), "words": ts.get("words"),
                            "text2tokens_after_4": tokens, "aligned_token_ids": aligned,
                            "aligned_equals_greedy_text_ids": aligned == ids[4:]}
    except IndexError as e:  # spec §6.1: FunASR fails when the text does not start with 4 tag pieces
        out["timestamp"] = {"error": f"IndexError: {e}"}
    return out


def record(m, folder: Path, wavs: dict, out_dir: Path, tiny: bool, seed: int) -> dict:
    """Write reference.safetensors / reference.json for an already loaded AutoModel."""
    from funasr.utils.postprocess_utils import rich_transcription_postprocess

    sp = m.kwargs["tokenizer"].sp
    conf = encoder_conf_from_yaml(folder / "config.yaml")
    enc = m.model.encoder
    dims = {"input_size": 560, "output_size": conf["output_size"], "attention_heads": conf["attention_heads"],
            "linear_units": conf["linear_units"], "num_blocks": conf["num_blocks"],
            "tp_blocks": conf["tp_blocks"], "kernel_size": conf["kernel_size"], "sanm_shfit": conf["sanm_shfit"],
            "vocab_size": int(m.model.ctc.ctc_lo.weight.shape[0]), "blank_id": int(m.model.blank_id),
            "num_encoders": len(enc.encoders), "num_tp_encoders": len(enc.tp_encoders),
            "lid_dict": m.model.lid_dict, "textnorm_dict": m.model.textnorm_dict,
            "cmvn_file": Path(str(m.kwargs["frontend"].cmvn_file)).name,
            "frontend_dither": float(m.kwargs["frontend"].dither)}
    tensors: dict[str, torch.Tensor] = {}
    clips = {stem: dump_clip(m, stem, wav, tensors, dict(dims, strict=tiny)) for stem, wav in wavs.items()}
    for c in clips.values():
        c.pop("_pe_check")

    # Padded batch of all clips through FunASR's inference must equal one-by-one.
    with LayerTaps(m.model) as taps:
        batch_res = m.generate(input=[str(w) for w in wavs.values()], language="auto", use_itn=False,
                               batch_size=len(wavs))
    batch = {"clips": list(wavs), "texts": [r["text"] for r in batch_res], "greedy_ids": [],
             "max_abs_logit_diff_vs_single": []}
    for i, stem in enumerate(wavs):
        single = tensors[f"{stem}/logits"]
        part = taps.out["logits"][i, : single.shape[0]]
        batch["greedy_ids"].append(greedy_ids(part))
        batch["max_abs_logit_diff_vs_single"].append(float((part - single).abs().max()))
        same = batch["greedy_ids"][-1] == clips[stem]["greedy_ids"] and batch["texts"][i] == clips[stem]["generate"]["auto"]
        batch.setdefault("equal_to_single", []).append(same)
        if tiny and not same:  # on CPU FunASR's padded batch is exact (spec §3.7); GPU kernels may differ
            raise RuntimeError(f"batched result differs from single for {stem}")

    extra = [c["greedy_ids"] for c in clips.values()]
    gen_texts = [t for c in clips.values() for t in c["generate"].values()]
    post = [{"raw": r, "rich": rich_transcription_postprocess(r)} for r in POSTPROCESS_GOLDENS + gen_texts]
    data = {
        "generator": "tools/reference/generate.py", "funasr": __import__("funasr").__version__,
        "torch": torch.__version__, "seed": seed, "config": dims, "special_token_ids":
        {t: sp.PieceToId(t) for t in toy_spm.SPECIAL_TOKENS}, "pieces": sp.GetPieceSize(),
        "spm_normalizer": spm_flags(sp), "clips": clips, "batch": batch,
        "tokenizer": tokenizer_cases(sp, extra, seed), "postprocess": post,
    }
    if tiny:
        data["timestamps"] = rigged_timestamps(m, wavs[RIG_CLIP], sp, tensors, seed)
    save_file(tensors, str(out_dir / "reference.safetensors"), metadata={"generator": "tools/reference/generate.py"})
    return data


def spm_flags(sp) -> dict:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    ns = proto.normalizer_spec
    return {"name": ns.name, "add_dummy_prefix": ns.add_dummy_prefix,
            "remove_extra_whitespaces": ns.remove_extra_whitespaces, "model_type": "bpe",
            "byte_fallback": proto.trainer_spec.byte_fallback}


def rigged_timestamps(m, wav: Path, sp, tensors: dict, seed: int) -> dict:
    """Spec §6.1: swap in a least-squares ctc_lo so greedy decode emits RIG_TEXT's pieces at RIG_FRAMES,
    then record FunASR generate(output_timestamp=True). The tiny folder's other weights are unchanged;
    the rigged head is stored as timestamps/ctc_lo.{weight,bias} in reference.safetensors."""
    _, taps = run_clip(m, wav)
    h = taps["tp_norm"]
    pieces = sp.EncodeAsIds(RIG_TEXT)
    if len(pieces) != len(RIG_FRAMES):
        raise RuntimeError(f"rig: {len(pieces)} pieces {sp.EncodeAsPieces(RIG_TEXT)} vs {len(RIG_FRAMES)} spans")
    tags = [sp.PieceToId(t) for t in ("<|en|>", "<|NEUTRAL|>", "<|Speech|>", "<|woitn|>")]
    frame_ids = tags + [0] * (h.shape[0] - 4)
    for tok, (a, b) in zip(pieces, RIG_FRAMES):
        for t in range(a, b):
            frame_ids[4 + t] = tok
    lin = m.model.ctc.ctc_lo
    saved = (lin.weight.detach().clone(), lin.bias.detach().clone())
    w, b = rig_head(h, frame_ids, lin.weight.shape[0], seed)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    try:
        res, taps2 = run_clip(m, wav, output_timestamp=True)
    finally:
        with torch.no_grad():
            lin.weight.copy_(saved[0])
            lin.bias.copy_(saved[1])
    if [int(i) for i in taps2["logits"].argmax(-1)] != frame_ids:
        raise RuntimeError("rig: argmax does not follow the planned frames")
    tensors["timestamps/ctc_lo.weight"] = w
    tensors["timestamps/ctc_lo.bias"] = b
    tensors["timestamps/logits"] = taps2["logits"]
    text = res["text"]
    tokens = sp.EncodeAsPieces(text)[4:]
    return {
        "clip": RIG_CLIP, "language": "auto", "use_itn": False, "weights": "timestamps/ctc_lo.*",
        "frame_ids": frame_ids, "planned": [{"piece": sp.IdToPiece(t), "id": t, "speech_frames": list(s)}
                                            for t, s in zip(pieces, RIG_FRAMES)],
        "num_speech_frames": h.shape[0] - 4, "text2tokens_after_4": tokens,
        "aligned_token_ids": [x for ids in sp.EncodeAsIds(tokens) for x in (ids or [124])],
        "text": text, "timestamp": res["timestamp"], "words": res["words"],
    }


def tiny(out_dir: Path, release: Path | None, seed: int) -> None:
    torch.set_num_threads(1)  # deterministic reductions for the head fit and the dumps
    tiny_dir = out_dir / "tiny"
    bpe = toy_spm.train_toy_spm(TINY_VOCAB, add_dummy_prefix=False, remove_extra_whitespaces=False)
    default_bpe = toy_spm.train_toy_spm(TINY_VOCAB, add_dummy_prefix=True, remove_extra_whitespaces=True,
                                        normalization_rule_name="identity")
    sp = spm.SentencePieceProcessor(model_proto=bpe)
    config = shrink_config(reference_file("config.yaml", release).read_text(encoding="utf-8"), TINY_ENCODER)
    am_mvn = reference_file("am.mvn", release)
    with tempfile.TemporaryDirectory() as tmp:
        wav_list = audio_clips.make_clips(out_dir / "audio", Path(tmp))
    wavs = {p.stem: p for p in wav_list}
    model = build_model(dict(TINY_ENCODER, normalize_before=True), sp.GetPieceSize(), seed)
    write_model_folder(tiny_dir, config, state_of(model), bpe, am_mvn)
    m = load_automodel(tiny_dir, "cpu")
    fit_tag_head(m, wavs, sp)
    write_model_folder(tiny_dir, config, state_of(m.model), bpe, am_mvn)
    m = load_automodel(tiny_dir, "cpu")  # everything below comes from the files on disk
    data = record(m, tiny_dir, wavs, out_dir, tiny=True, seed=seed)
    (out_dir / "spm_default_flags.model").write_bytes(default_bpe)
    dsp = spm.SentencePieceProcessor(model_proto=default_bpe)
    data["tokenizer_default_flags"] = {
        "model": "spm_default_flags.model", "spm_normalizer": spm_flags(dsp),
        "cases": tokenizer_cases(dsp, [dsp.EncodeAsIds("hello world")], seed)}
    (out_dir / "reference.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n",
                                            encoding="utf-8")
    # Last, so that nothing above depends on it: token times across segments of a long file.
    long_audio.run(m, m.kwargs["tokenizer"].sp, out_dir / "audio", out_dir / "long", LayerTaps)


def full(out_dir: Path, release: Path | None, seed: int, device: str, wav_paths: list[Path]) -> None:
    """Release config (234 M params, vocab 25055, special tokens at their release ids), random weights."""
    folder = out_dir / "model"
    base = toy_spm.train_toy_spm(TINY_VOCAB, add_dummy_prefix=False, remove_extra_whitespaces=False)
    bpe = toy_spm.release_sized_spm(base)
    sp = spm.SentencePieceProcessor(model_proto=bpe)
    config = reference_file("config.yaml", release).read_text(encoding="utf-8")
    conf = encoder_conf_from_yaml(reference_file("config.yaml", release))
    model = build_model(conf, sp.GetPieceSize(), seed)
    write_model_folder(folder, config, state_of(model), bpe, reference_file("am.mvn", release),
                       safetensors=True)
    del model
    if not wav_paths:
        committed = REPO / "tests" / "data" / "sensevoice" / "audio"
        wav_paths = sorted(committed.glob("*.wav"))
    m = load_automodel(folder, device)
    data = record(m, folder, {p.stem: p for p in wav_paths}, out_dir, tiny=False, seed=seed)
    (out_dir / "reference.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n",
                                            encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "sensevoice")
    ap.add_argument("--full", action="store_true", help="release-size random model into --out")
    ap.add_argument("--device", default="cpu", help="FunASR device for --full / --bench (cpu, cuda, cuda:0)")
    ap.add_argument("--release-dir", type=Path, default=None,
                    help="folder with the release config.yaml and am.mvn (default ../shared/reference)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--bench", action="store_true", help="time FunASR on WAVS with --model")
    ap.add_argument("--model", type=Path, help="model folder for --bench (e.g. DIR/model from --full)")
    ap.add_argument("--segment-s", type=float, default=30.0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("wavs", nargs="*", type=Path, help="wav files for --bench / --full")
    args = ap.parse_args()
    if args.bench:
        import bench

        bench.run(args.model, args.wavs, args.device, args.segment_s, args.batch_size, args.repeat)
    elif args.full:
        args.out.mkdir(parents=True, exist_ok=True)
        full(args.out, args.release_dir, args.seed, args.device, args.wavs)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        tiny(args.out, args.release_dir, args.seed)


if __name__ == "__main__":
    main()
