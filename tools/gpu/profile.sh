#!/usr/bin/env bash
# Where the GPU time of one forward goes, ours and FunASR's, on a CUDA machine.
#
#   BIN=folder-with-cuda-binaries MODEL=model-folder WAV=30s.wav bash tools/gpu/profile.sh [BATCH] [DTYPE]
#
# Ours: Nsight Compute's per-kernel summary (durations only, clocks left alone) of
# `sensevoice_bench forward` (2 warm-ups + 1 timed forward at BATCH, so each kernel's count is 3× a
# forward's). FunASR: torch.profiler's kernel table for one forward under autocast at the same batch.
set -uo pipefail
BIN=$(realpath "${BIN:-.device-bin}")
BATCH=${1:-16}
DT=${2:-bf16}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "::: ours: ncu per-kernel summary, batch $BATCH, $DT"
"$NCU" --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel --csv \
    "$BIN/sensevoice_bench" forward "$MODEL" cuda:0 "$DT" "$WAV" "$BATCH" 1 > /tmp/ncu.csv 2> /tmp/ncu.err
tail -3 /tmp/ncu.err
python3 - /tmp/ncu.csv <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, body = rows[0], rows[1:]
ix = {k: i for i, k in enumerate(head)}
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in body:
    if r[ix["Metric Name"]] != "gpu__time_duration.sum":
        continue
    name = r[ix["Kernel Name"]][:90]
    unit = r[ix["Metric Unit"]]
    v = float(r[ix["Average"]].replace(",", "")) * {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3}.get(unit, 1.0)
    n = int(r[ix["Invocations"]]) if "Invocations" in ix else 1
    tot[name] += v * n; cnt[name] += n
all_ms = sum(tot.values())
print(f"total kernel time {all_ms:.2f} ms over {sum(cnt.values())} launches (3 forwards + load)")
for name, ms in sorted(tot.items(), key=lambda x: -x[1])[:30]:
    print(f"{ms/3:9.3f} ms/forward {100*ms/all_ms:5.1f}%  {cnt[name]//3:5d}/fwd  {name}")
PY
[ "${PROFILE_FUNASR:-1}" = 0 ] && exit 0
echo "::: FunASR: torch.profiler, batch $BATCH, autocast ${FUNASR_PRECISION:-f16}"
( cd tools/reference && python3 bench_forward.py --model "$MODEL" --device cuda --profile "${FUNASR_PRECISION:-f16}:$BATCH" "$WAV" 2>/dev/null | grep -v "^\s*$" | head -45 )
