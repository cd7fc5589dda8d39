#!/usr/bin/env python3
"""The table of tools/bench/whisper_cpu.sh: one row per preset and decoder step of ours, with
transformers' times of the same run beside them and the ratio (transformers' best total over
ours: above 1, ours is faster).

    python3 tools/bench/whisper_cpu.py WORK/whisper_cpu.jsonl
"""

import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    print("| preset | step | round | ours: total / encoder / decoder ms | tokens "
          "| transformers: total / encoder / decoder ms | transformers / ours | ids = transformers f32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours = r["phases_best_ms"]
        theirs = r.get("transformers_best_ms")
        ratio = f"{theirs / r['best_ms']:.2f}" if theirs else "-"
        tp = r.get("transformers_phases_best_ms") or {}
        their_phases = " / ".join(f"{tp[k]:.0f}" if k in tp else "-" for k in ("encoder", "decoder"))
        print(
            f"| {r['preset']} | {r['step']} | {r['round']} "
            f"| {r['best_ms']:.0f} / {ours['encoder']:.0f} / {ours['decoder']:.0f} | {r['tokens']} "
            f"| {'-' if theirs is None else round(theirs)} / {their_phases} "
            f"| {ratio} | {r['ids_identical_to_transformers_f32']} |"
        )


if __name__ == "__main__":
    main()
