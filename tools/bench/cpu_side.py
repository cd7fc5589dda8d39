"""Summary of tools/bench/cpu_side.sh: our CPU forward and end to end against FunASR's.

    python3 tools/bench/cpu_side.py cpu_side.jsonl ids_funasr.json [ids_ours_MODE.json ...]

Ratios are FunASR's fp32 median time over ours (above 1: we are faster), from the same run. Our rows
are per CPU matrix product (`cpu_matmul`, GPUSCRIBE_CPU_MATMUL), FunASR's per precision (fp32, bf16
autocast).
"""

import json
import re
import sys


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]

    def pick(bench: str, impl: str, **want) -> dict | None:
        return next((r for r in rows if r.get("bench") == bench and r.get("impl") == impl
                     and all(r.get(k) == v for k, v in want.items())), None)

    modes = list(dict.fromkeys(r["cpu_matmul"] for r in rows if r.get("impl") == "gpuscribe" and "cpu_matmul" in r))
    x = lambda r: r["audio_s"] * 1000 / r["median_ms"]  # noqa: E731
    print("| | median | FunASR fp32 time / this |")
    print("|---|---|---|")
    for bench, what in [("forward_argmax", "forward + argmax, 30 s segment"), ("generate", "one file end to end")]:
        base = pick(bench, "funasr", precision="fp32")
        lines = [(f"ours, f32 model, {m} products", pick(bench, "gpuscribe", cpu_matmul=m)) for m in modes]
        lines += [(f"FunASR {p}", pick(bench, "funasr", precision=p)) for p in ("fp32", "bf16")]
        for name, r in lines:
            if not r:
                print(f"| {what}: {name} | missing | |")
                continue
            ratio = f"{base['median_ms'] / r['median_ms']:.2f}x" if base else "missing"
            print(f"| {what}: {name} | {r['median_ms']:.0f} ms ({x(r):.1f}x realtime) | {ratio} |")
    for m in modes:
        fwd = pick("forward_argmax", "gpuscribe", cpu_matmul=m)
        if fwd and "load_ms" in fwd:
            print(f"our model load (CPU, f32, {m}): {fwd['load_ms']:.0f} ms; threads: ours {fwd.get('threads')}, "
                  f"FunASR {(pick('forward_argmax', 'funasr') or {}).get('threads')}")
    agree = pick("autocast_agreement", "funasr", precision="bf16")
    if agree:
        print(f"FunASR bf16 autocast: {agree['frames_equal_to_fp32']:.4f} of frame ids equal to its own fp32")
    theirs = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else None
    for path in sys.argv[3:]:
        ours = json.load(open(path))
        mode = re.sub(r"^.*ids_ours_|\.json$", "", path)
        same = sum(a == b for a, b in zip(ours, theirs))
        print(f"frame ids of the 30 s segment ({mode}): {same}/{len(theirs)} equal to FunASR's fp32 "
              f"({'identical' if ours == theirs else 'DIFFERENT'})")
    for m in modes or [None]:
        summary = next((r for r in rows if r.get("summary") == "parity" and r.get("cpu_matmul") == m), None)
        if summary:
            rels = [r["rel"] for r in rows if "rel" in r and r.get("cpu_matmul") == m]
            print(f"parity on the reference clips ({m}): {summary['clips_with_identical_ids']}/{summary['clips']} clips "
                  f"with identical ids, frame agreement {summary['frame_id_agreement']:.4f}; worst logits rel "
                  f"{max(rels) if rels else float('nan'):.2e}")


if __name__ == "__main__":
    main()
