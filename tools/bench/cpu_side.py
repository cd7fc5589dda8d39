"""Summary of tools/bench/cpu_side.sh: our CPU forward and end to end against FunASR's.

    python3 tools/bench/cpu_side.py cpu_side.jsonl ids_ours.json ids_funasr.json

Ratios are FunASR's median time over ours (above 1: we are faster), from the same run.
"""

import json
import sys


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]

    def pick(bench: str, impl: str) -> dict | None:
        return next((r for r in rows if r.get("bench") == bench and r.get("impl") == impl), None)

    print("| | ours (f32) | FunASR (fp32) | FunASR time / ours |")
    print("|---|---|---|---|")
    for bench, what in [("forward_argmax", "forward + argmax, 30 s segment"), ("generate", "one file end to end")]:
        o, t = pick(bench, "gpuscribe"), pick(bench, "funasr")
        if not (o and t):
            print(f"| {what} | {o and o['median_ms']} | {t and t.get('median_ms')} | missing |")
            continue
        x = lambda r: r["audio_s"] * 1000 / r["median_ms"]  # noqa: E731
        print(f"| {what} | {o['median_ms']:.0f} ms ({x(o):.1f}x realtime) | "
              f"{t['median_ms']:.0f} ms ({x(t):.1f}x realtime) | {t['median_ms'] / o['median_ms']:.2f}x |")
    fwd = pick("forward_argmax", "gpuscribe")
    if fwd and "load_ms" in fwd:
        print(f"\nour model load (CPU, f32): {fwd['load_ms']:.0f} ms; threads: ours {fwd.get('threads')}, "
              f"FunASR {(pick('forward_argmax', 'funasr') or {}).get('threads')}")
    if len(sys.argv) > 3:
        ours = json.load(open(sys.argv[2]))
        theirs = json.load(open(sys.argv[3]))
        same = sum(a == b for a, b in zip(ours, theirs))
        print(f"frame ids of the 30 s segment: {same}/{len(theirs)} equal to FunASR's fp32 "
              f"({'identical' if ours == theirs else 'DIFFERENT'})")
    summary = next((r for r in rows if r.get("summary") == "parity"), None)
    if summary:
        print(f"parity on the reference clips: {summary['clips_with_identical_ids']}/{summary['clips']} clips with "
              f"identical ids, frame agreement {summary['frame_id_agreement']:.4f}; worst logits rel "
              f"{max(r['rel'] for r in rows if 'rel' in r):.2e}")


if __name__ == "__main__":
    main()
