"""FunASR SenseVoiceSmall at its best: forward + argmax and generate() under every precision torch offers.

    python3 tools/reference/bench_forward.py --model DIR/model --device cuda --batches 16,32,64 seg30.wav
    python3 tools/reference/bench_forward.py --model DIR/model --device cpu --threads 2 --batches 1 seg30.wav

Prints one JSON object per line:
- `forward_argmax`: the model's own encoder + CTC log-softmax + argmax, exactly the steps of
  `SenseVoiceSmall.inference` after feature extraction (prompt queries, encoder, ctc.log_softmax), on a
  batch of copies of one segment, features computed once outside the timing; fp32, and torch.autocast
  f16 / bf16 (what a user of FunASR gets by wrapping `generate()` in autocast); median and best of
  `--repeat` runs after warm-up, with a device sync (ids copied to the host) inside each timing.
- `autocast_agreement`: for each half precision, the share of frame ids equal to fp32's on the same
  batch (FunASR's own half-precision agreement, the bar for ours).
- `generate`: `AutoModel.generate()` on the whole list of segments (frontend + forward + decode), fp32
  and under autocast, best of `--repeat`.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench import load_segments
from funasr_ref import load_automodel


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    if precision == "fp32":
        return torch.autocast(device_type=device.split(":")[0], enabled=False)
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


@torch.inference_mode()
def forward_ids(model, speech: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """SenseVoiceSmall.inference from the prompt queries to the argmax, unchanged (language auto, woitn)."""
    b = speech.size(0)
    dev = speech.device
    language_query = model.embed(torch.LongTensor([[0]]).to(dev)).repeat(b, 1, 1)
    textnorm_query = model.embed(torch.LongTensor([[model.textnorm_dict["woitn"]]]).to(dev)).repeat(b, 1, 1)
    speech = torch.cat((textnorm_query, speech), dim=1)
    event_emo_query = model.embed(torch.LongTensor([[1, 2]]).to(dev)).repeat(b, 1, 1)
    speech = torch.cat((torch.cat((language_query, event_emo_query), dim=1), speech), dim=1)
    encoder_out, _ = model.encoder(speech, lengths + 4)
    if isinstance(encoder_out, tuple):
        encoder_out = encoder_out[0]
    return model.ctc.log_softmax(encoder_out).argmax(-1)


def profile(model, feats, lens, device: str, precision: str, batch: str) -> None:
    """One forward + argmax under torch.profiler: the kernels by total CUDA time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    speech, lengths = feats.repeat(int(batch), 1, 1), lens.repeat(int(batch))
    with autocast(device, precision):
        for _ in range(3):
            forward_ids(model, speech, lengths).cpu()
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            forward_ids(model, speech, lengths).cpu()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--batches", default="16,32,64")
    ap.add_argument("--precisions", default="fp32,f16,bf16")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--generate-batch", type=int, default=0, help="batch for generate() (0: skip it)")
    ap.add_argument("--dump-ids", type=Path, help="write fp32's frame ids of the segment (JSON list) here")
    ap.add_argument("--profile", default="", help="PRECISION:BATCH: print torch.profiler's CUDA kernel table for one forward and exit")
    ap.add_argument("wav", type=Path, help="one segment (e.g. 30 s) that every batch repeats")
    args = ap.parse_args()
    from funasr.utils.load_utils import extract_fbank

    m = load_automodel(args.model, args.device)
    if args.threads:  # after loading: AutoModel sets torch's thread count itself (its `ncpu`, 4)
        torch.set_num_threads(args.threads)
    model = m.model.eval()
    frontend = m.kwargs["frontend"]
    segments = load_segments([args.wav], 1e9)
    audio_s = len(segments[0]) / 16000
    feats, lens = extract_fbank([torch.from_numpy(segments[0])], data_type="sound", frontend=frontend)
    feats, lens = feats.to(args.device), lens.to(args.device)
    precisions = args.precisions.split(",")
    if args.profile:
        profile(model, feats, lens, args.device, *args.profile.split(":"))
        return
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    common = {"impl": "funasr", "device": args.device, "gpu": gpu, "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    for batch in [int(b) for b in args.batches.split(",")]:
        speech = feats.repeat(batch, 1, 1)
        lengths = lens.repeat(batch)
        ids = {}
        for precision in precisions:
            with autocast(args.device, precision):
                for _ in range(2):
                    forward_ids(model, speech, lengths).cpu()
                runs = []
                for _ in range(args.repeat):
                    sync(args.device)
                    t0 = time.perf_counter()
                    out = forward_ids(model, speech, lengths).cpu()
                    runs.append((time.perf_counter() - t0) * 1000)
            ids[precision] = out
            med, best = statistics.median(runs), min(runs)
            total_s = audio_s * batch
            print(json.dumps({"bench": "forward_argmax", **common, "precision": precision, "batch": batch,
                              "audio_s": total_s, "median_ms": round(med, 3), "best_ms": round(best, 3),
                              "x_realtime_median": round(total_s * 1000 / med, 1),
                              "x_realtime_best": round(total_s * 1000 / best, 1),
                              "peak_mem_bytes": torch.cuda.max_memory_allocated() if gpu else None}), flush=True)
        if "fp32" in ids and args.dump_ids:
            args.dump_ids.write_text(json.dumps(ids["fp32"][0].tolist()))
        if "fp32" in ids:
            for precision, got in ids.items():
                if precision != "fp32":
                    equal = float((got == ids["fp32"]).float().mean())
                    print(json.dumps({"bench": "autocast_agreement", **common, "precision": precision,
                                      "batch": batch, "frames_equal_to_fp32": round(equal, 5)}), flush=True)
    if args.generate_batch:
        batch = args.generate_batch
        inputs = [segments[0]] * batch
        for precision in precisions:
            with autocast(args.device, precision):
                m.generate(input=inputs, batch_size=batch, language="auto", use_itn=False)
                runs = []
                for _ in range(max(3, args.repeat // 2)):
                    sync(args.device)
                    t0 = time.perf_counter()
                    m.generate(input=inputs, batch_size=batch, language="auto", use_itn=False)
                    sync(args.device)
                    runs.append((time.perf_counter() - t0) * 1000)
            best = min(runs)
            total_s = audio_s * batch
            print(json.dumps({"bench": "generate", **common, "precision": precision, "batch": batch,
                              "audio_s": total_s, "best_ms": round(best, 2),
                              "median_ms": round(statistics.median(runs), 2),
                              "x_realtime_best": round(total_s * 1000 / best, 1)}), flush=True)


if __name__ == "__main__":
    main()
