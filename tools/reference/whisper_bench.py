#!/usr/bin/env python3
"""transformers' side of the Whisper speed and parity comparison (`examples/whisper_bench.rs`
reads what this writes): for each dtype, one greedy window per clip (features, encoder,
decoder; language `en`, no timestamps, at most --max-new-tokens new tokens, the logits
processors WhisperForConditionalGeneration builds for it: begin-suppress and suppress), timed
over --repeat runs, with the ids of the last run, and each greedy step's two best scores after
the processors (an untimed pass that is also the warm-up) so that a difference in ids can be
told apart from a near tie.

The f32 reference is exact f32 on CUDA too: TF32 is turned off for matmuls and for cuDNN's
convolutions (torch's default keeps TF32 on for cuDNN convolutions, `torch.backends.cudnn.conv.
fp32_precision == "tf32"`; that rounds the encoder's two convolutions' inputs and weights to 10
mantissa bits, and on random weights that moves the logits by up to 3 and changes the greedy ids
from the first token). `--tf32-convs` keeps torch's default on CUDA, and on the CPU emulates it
(inputs and weights of the encoder's convolutions rounded to TF32, sums in f32), to show its effect.
The flags used are written out as "fp32_precision".

    /work/venv-ref/bin/python tools/reference/whisper_bench.py --model DIR --device cuda:0 \
        --dtypes float32,float16,bfloat16 --out /tmp/ref-tiny.json [WAV…]

The model folder is any Hugging Face Whisper folder: `whisper_generate.py --preset tiny
--model-only --out D` (random weights, D/model), or the converted whisper-base
(`whisper_from_ct2.py`). The clips default to tests/data/sensevoice/audio/*.wav.

Output: {"device", "torch", "transformers", "max_new_tokens", "clips": [names], "audio_s",
         "fp32_precision": {"matmul", "cudnn_conv", "tf32_convs"},
         "runs": {dtype: {"runs_ms", "best_ms", "tokens", "ids": {clip: [...]},
                          "phases_best_ms": {"features", "encoder", "decoder"}, "threads",
                          "top2": {clip: [[[id, score], [id, score]] per step]}}}}
"""

import argparse
import copy
import json
import math
import time
import wave
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "tests" / "data" / "sensevoice" / "audio"


def read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float32) / 32768.0


def tf32(x):
    """Rounds f32 values to TF32 (10 mantissa bits, to nearest), as tensor cores read them."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def set_fp32_precision(tf32_convs):
    """Exact f32 for matmuls and cuDNN convolutions unless tf32_convs (torch's own default for
    cuDNN convolutions). Returns the flags in force."""
    conv = "tf32" if tf32_convs else "ieee"
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "ieee"  # torch >= 2.9
        torch.backends.cudnn.conv.fp32_precision = conv
        torch.backends.cudnn.rnn.fp32_precision = conv
        return {"matmul": torch.backends.cuda.matmul.fp32_precision,
                "cudnn_conv": torch.backends.cudnn.conv.fp32_precision}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = tf32_convs
    return {"matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "cudnn_conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"}


def emulate_tf32_convs(model):
    """On the CPU: the encoder's convolutions with TF32 inputs and weights, f32 sums."""
    import torch.nn.functional as F

    for conv in (model.model.encoder.conv1, model.model.encoder.conv2):
        conv.forward = (lambda c: lambda x: F.conv1d(
            tf32(x), tf32(c.weight), c.bias, c.stride, c.padding))(conv)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--tf32-convs", action="store_true",
                    help="torch's default TF32 cuDNN convolutions on CUDA (emulated on the CPU)")
    ap.add_argument("--out", required=True)
    ap.add_argument("wavs", nargs="*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = set_fp32_precision(args.tf32_convs)
    precision["tf32_convs"] = args.tf32_convs

    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers.generation import GenerationMixin, LogitsProcessorList

    wavs = [Path(w) for w in args.wavs] or sorted(AUDIO.glob("*.wav"))
    clips = {w.stem: read_wav(w)[: 30 * 16000] for w in wavs}
    tok = json.loads((Path(args.model) / "tokenizer.json").read_text())
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    prompt = [special[t] for t in ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]]
    fe = WhisperFeatureExtractor.from_pretrained(args.model) if (Path(args.model) / "preprocessor_config.json").exists() else None
    out = {"device": args.device, "torch": torch.__version__,
           "transformers": __import__("transformers").__version__,
           "max_new_tokens": args.max_new_tokens, "clips": list(clips),
           "audio_s": sum(len(c) for c in clips.values()) / 16000,
           "fp32_precision": precision, "runs": {}}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        model = WhisperForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
        if args.tf32_convs and dtype == torch.float32 and not args.device.startswith("cuda"):
            emulate_tf32_convs(model)
        if fe is None:
            fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        config = copy.deepcopy(model.generation_config)
        config.return_timestamps = False
        config.no_speech_threshold = None
        processors = model._retrieve_logit_processors(config, None, len(prompt), 1, args.device)

        def window(audio, scores=False):
            feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
            feats = feats.to(args.device, dtype)
            with torch.no_grad():
                out = GenerationMixin.generate(
                    model, feats, generation_config=config,
                    logits_processor=LogitsProcessorList(processors),
                    decoder_input_ids=torch.tensor([prompt], device=args.device),
                    max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1,
                    return_dict_in_generate=scores, output_scores=scores)
            if not scores:
                return out[0].tolist()[len(prompt):]
            top2 = []
            for step in out.scores:
                values, indices = step[0].float().topk(2)
                top2.append([[i, v if math.isfinite(v) else None]
                             for i, v in zip(indices.tolist(), values.tolist())])
            return out.sequences[0].tolist()[len(prompt):], top2

        # Untimed: each step's two best scores; also the warm-up (kernels, allocator).
        top2 = {}
        for name, audio in clips.items():
            first_ids, top2[name] = window(audio, scores=True)
            if [t[0][0] for t in top2[name]] != first_ids:
                print(f"{name}: the best scores are not the ids (a tie?)")
        runs, ids = [], {}
        for _ in range(args.repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for name, audio in clips.items():
                ids[name] = window(audio)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            runs.append((time.perf_counter() - t0) * 1000)
        # The phases apart, best over --repeat, summed over the clips: the feature extractor,
        # the encoder, and generate() from the encoder's output (prompt and greedy steps).
        phases = {"features": math.inf, "encoder": math.inf, "decoder": math.inf}
        for _ in range(args.repeat):
            sums = dict.fromkeys(phases, 0.0)
            for name, audio in clips.items():
                t0 = time.perf_counter()
                feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
                feats = feats.to(args.device, dtype)
                t1 = time.perf_counter()
                with torch.no_grad():
                    enc = model.model.encoder(feats)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    GenerationMixin.generate(
                        model, encoder_outputs=enc, generation_config=config,
                        logits_processor=LogitsProcessorList(processors),
                        decoder_input_ids=torch.tensor([prompt], device=args.device),
                        max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t3 = time.perf_counter()
                for key, (a, b) in zip(sums, [(t0, t1), (t1, t2), (t2, t3)]):
                    sums[key] += (b - a) * 1000
            phases = {k: min(phases[k], sums[k]) for k in phases}
        out["runs"][dtype_name] = {"runs_ms": runs, "best_ms": min(runs), "phases_best_ms": phases,
                                   "threads": torch.get_num_threads(),
                                   "tokens": sum(len(v) for v in ids.values()), "ids": ids,
                                   "top2": top2}
        print(dtype_name, f"best {min(runs):.1f} ms", {k: len(v) for k, v in ids.items()}, phases)
        del model
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
