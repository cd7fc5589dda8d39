"""Side-by-side table from the JSON lines of `sensevoice_bench forward` and `bench_forward.py`.

    python3 tools/gpu/compare.py results.jsonl

For each batch size: our median per precision, FunASR's median per precision, FunASR's best
configuration (the fastest precision at that batch, and over all batches), and the ratio of our best
precision to it. Throughput is audio seconds per wall second (x realtime), from medians.

Ours is given twice: `x_realtime_median` times the host-side padding and upload of the features
too (what transcription does), `x_realtime_from_device_features` starts from features already on
the device, as FunASR's timing does. The first table is the former; the second, where present,
the latter (the like-for-like comparison).
"""

import json
import sys
from collections import defaultdict


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
    fwd = [r for r in rows if r.get("bench") == "forward_argmax"]
    table(fwd, "x_realtime_median", "ours: host padding and upload of the features included")
    if any("x_realtime_from_device_features" in r for r in fwd):
        print()
        table(fwd, "x_realtime_from_device_features", "ours: from features on the device, as FunASR's")
    agree = {f"ours {r['dtype'].lower()}": r["frames_equal_to_funasr_fp32"] for r in fwd
             if r["impl"] == "gpuscribe" and r.get("frames_equal_to_funasr_fp32") is not None}
    agree.update({f"FunASR autocast {r['precision']}": r["frames_equal_to_fp32"] for r in rows
                  if r.get("bench") == "autocast_agreement"})
    if agree:
        print("frame ids equal to FunASR fp32 on the same segment: "
              + ", ".join(f"{k} {v:.4f}" for k, v in agree.items()))
    for r in rows:
        if r.get("bench") in ("autocast_agreement", "generate"):
            print(json.dumps(r))


def table(fwd: list, key: str, title: str) -> None:
    ours = defaultdict(dict)
    theirs = defaultdict(dict)
    for r in fwd:
        if r["impl"] == "gpuscribe":
            ours[r["batch"]][r["dtype"].lower()] = r[key]
        else:
            theirs[r["batch"]][r["precision"]] = r["x_realtime_median"]
    print(f"{title}:")
    batches = sorted(set(ours) | set(theirs))
    funasr_best = max((x, b, p) for b in theirs for p, x in theirs[b].items()) if theirs else None
    print("| batch | ours (x realtime, median) | FunASR (x realtime, median) | ours best / FunASR best at this batch |")
    print("|---|---|---|---|")
    for b in batches:
        o = ", ".join(f"{p} {x:,.0f}" for p, x in sorted(ours[b].items()))
        t = ", ".join(f"{p} {x:,.0f}" for p, x in sorted(theirs[b].items()))
        ratio = ""
        if ours[b] and theirs[b]:
            ratio = f"{max(ours[b].values()) / max(theirs[b].values()):.2f}x"
        print(f"| {b} | {o} | {t} | {ratio} |")
    if funasr_best and ours:
        ours_best = max((x, b, p) for b in ours for p, x in ours[b].items())
        print()
        print(f"FunASR's best configuration: {funasr_best[2]} at batch {funasr_best[1]}: {funasr_best[0]:,.0f}x realtime")
        print(f"ours at its best: {ours_best[2]} at batch {ours_best[1]}: {ours_best[0]:,.0f}x realtime")
        print(f"ratio (ours best / FunASR best): {ours_best[0] / funasr_best[0]:.2f}")


if __name__ == "__main__":
    main()
