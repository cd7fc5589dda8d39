#!/usr/bin/env python3
"""transformers' side of the Whisper speed and parity comparison (`examples/whisper_bench.rs`
reads what this writes): for each dtype, one greedy window per clip (features, encoder,
decoder; language `en`, no timestamps, at most --max-new-tokens new tokens, the logits
processors WhisperForConditionalGeneration builds for it: begin-suppress and suppress), timed
over --repeat runs, with the ids of the last run.

    /work/venv-ref/bin/python tools/reference/whisper_bench.py --model DIR --device cuda:0 \
        --dtypes float32,float16,bfloat16 --out /tmp/ref-tiny.json [WAV…]

The model folder is any Hugging Face Whisper folder: `whisper_generate.py --preset tiny
--model-only --out D` (random weights, D/model), or the converted whisper-base
(`whisper_from_ct2.py`). The clips default to tests/data/sensevoice/audio/*.wav.

Output: {"device", "torch", "transformers", "max_new_tokens", "clips": [names],
         "audio_s", "runs": {dtype: {"runs_ms", "best_ms", "tokens", "ids": {clip: [...]}}}}
"""

import argparse
import copy
import json
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", required=True)
    ap.add_argument("wavs", nargs="*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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
           "audio_s": sum(len(c) for c in clips.values()) / 16000, "runs": {}}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        model = WhisperForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
        if fe is None:
            fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        config = copy.deepcopy(model.generation_config)
        config.return_timestamps = False
        config.no_speech_threshold = None
        processors = model._retrieve_logit_processors(config, None, len(prompt), 1, args.device)

        def window(audio):
            feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
            feats = feats.to(args.device, dtype)
            with torch.no_grad():
                ids = GenerationMixin.generate(
                    model, feats, generation_config=config,
                    logits_processor=LogitsProcessorList(processors),
                    decoder_input_ids=torch.tensor([prompt], device=args.device),
                    max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1)
            return ids[0].tolist()[len(prompt):]

        window(next(iter(clips.values())))  # warm-up (kernels, allocator)
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
        out["runs"][dtype_name] = {"runs_ms": runs, "best_ms": min(runs),
                                   "tokens": sum(len(v) for v in ids.values()), "ids": ids}
        print(dtype_name, f"best {min(runs):.1f} ms", {k: len(v) for k, v in ids.items()})
        del model
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
