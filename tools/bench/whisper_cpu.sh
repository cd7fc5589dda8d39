#!/usr/bin/env bash
# Whisper on the CPU against transformers on the same machine, same threads, same random models
# and clips, in one run: for each preset, transformers' greedy windows (tools/reference/
# whisper_bench.py, f32), then ours (examples/whisper_bench.rs) with each decoder step (candle's
# operations and the fused step); prints one line per run and a table (tools/bench/whisper_cpu.py).
#
#   BENCH=path/to/whisper_bench bash tools/bench/whisper_cpu.sh [THREADS]
#
# BENCH: a release build of the example (`cargo build --release --example whisper_bench`; default
# $CARGO_TARGET_DIR/release/examples/whisper_bench, or target/...). PYTHON: torch 2.11 and
# transformers (default python3). WORK (default /tmp/whisper-cpu) holds the random models, made once
# with tools/reference/whisper_generate.py --preset P --model-only. PRESETS (default "tiny base"),
# THREADS (default: every core) for both sides, REPEAT (default 3) timed runs after a warm-up,
# STEPS (default "candle fused") the decoder steps of ours to run, ROUNDS (default 1) how often
# ours runs each, alternating.
# Everything else running on the machine shares the cores: note it beside the numbers.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
WORK=${WORK:-/tmp/whisper-cpu}
PYTHON=${PYTHON:-python3}
REPEAT=${REPEAT:-3}
PRESETS=${PRESETS:-tiny base}
STEPS=${STEPS:-candle fused}
ROUNDS=${ROUNDS:-1}
BENCH=${BENCH:-${CARGO_TARGET_DIR:-target}/release/examples/whisper_bench}
mkdir -p "$WORK"
out=$WORK/whisper_cpu.jsonl
: > "$out"
echo "::: $(date -u +%FT%TZ) $(nproc) cores, $threads threads; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for preset in $PRESETS; do
    model=$WORK/$preset/model
    if [ ! -e "$model/config.json" ]; then
        "$PYTHON" tools/reference/whisper_generate.py --preset "$preset" --model-only \
            --out "$WORK/$preset" > /dev/null
    fi
    ref=$WORK/ref-$preset.json
    "$PYTHON" tools/reference/whisper_bench.py --model "$model" --device cpu --dtypes float32 \
        --threads "$threads" --repeat "$REPEAT" --out "$ref" > /dev/null
    for round in $(seq "$ROUNDS"); do
        for step in $STEPS; do
            RAYON_NUM_THREADS=$threads WHISPER_BENCH_STEP=$step "$BENCH" "$model" "$ref" cpu f32 \
                "$REPEAT" | PRESET=$preset ROUND=$round python3 -c '
import json, os, sys
for line in sys.stdin:
    r = json.loads(line)
    r["preset"] = os.environ["PRESET"]
    r["round"] = int(os.environ["ROUND"])
    print(json.dumps(r))' >> "$out"
        done
    done
done
python3 tools/bench/whisper_cpu.py "$out"
