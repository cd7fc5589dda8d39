#!/usr/bin/env bash
# Our CPU forward against FunASR's on the same machine, same cores, same release-size model and
# WAV, in one run; prints the ratios (tools/bench/cpu_side.py) and the frame-id agreement.
#
#   BENCH=path/to/sensevoice_bench bash tools/bench/cpu_side.sh [THREADS]
#
# BENCH: a release build of the example (`cargo build --release --example sensevoice_bench`;
# default $CARGO_TARGET_DIR/release/examples/sensevoice_bench, or target/...). PYTHON: torch 2.11
# and funasr 1.4.16 (default python3). WORK (default /tmp/cpu-side) holds the random release-size
# model (made once with tools/reference/generate.py --full, about 2 GB) and the 10 s / 30 s WAVs;
# MODEL_DIR overrides the model folder (a `generate.py --full` output: DIR/model, DIR/reference.*).
# THREADS (default: every core) is the thread count of both sides; with CPUS (e.g. 0,1) both run
# pinned to those cores through taskset. REPEAT (default 5) timed runs after warm-up. MATMULS (default
# "bf16x3 f32 bf16") lists our CPU matrix products to run (GPUSCRIBE_CPU_MATMUL, the first is the default);
# GENERATE=0 skips FunASR's generate() (minutes on 2 cores).
# Everything else running on the machine shares the cores: note it beside the numbers.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
WORK=${WORK:-/tmp/cpu-side}
PYTHON=${PYTHON:-python3}
REPEAT=${REPEAT:-5}
BENCH=${BENCH:-${CARGO_TARGET_DIR:-target}/release/examples/sensevoice_bench}
mkdir -p "$WORK"
pin=()
if [ -n "${CPUS:-}" ]; then pin=(taskset -c "$CPUS"); fi
if [ -z "${MODEL_DIR:-}" ]; then
    MODEL_DIR=$WORK/full
    if [ ! -e "$MODEL_DIR/model/model.pt" ]; then
        echo "::: making the random release-size model and its FunASR reference (once)"
        (cd tools/reference && "$PYTHON" generate.py --full --out "$MODEL_DIR" 2>&1 | tail -1)
    fi
fi
MODEL=$MODEL_DIR/model
for s in 10 30; do
    [ -e "$WORK/speech_${s}s.wav" ] || "$PYTHON" tools/gpu/make_wav.py "$WORK/speech_${s}s.wav" "$s"
done
seg=$WORK/speech_30s.wav
out=$WORK/cpu_side.jsonl
: > "$out"
echo "::: machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "::: threads $threads${CPUS:+, pinned to cores $CPUS}; other busy processes:"
ps -eo pcpu,comm --sort=-pcpu | awk 'NR > 1 && $1 > 5 {print "    " $0}' | head -5

# Our CPU matrix products (GPUSCRIBE_CPU_MATMUL): the default first, then the others.
MATMULS=${MATMULS:-bf16x3 f32 bf16}
for mm in $MATMULS; do
    tag() { sed "s/^{/{\"cpu_matmul\": \"$mm\", /"; }
    echo "::: ours ($mm matrix products): forward + argmax of one 30 s segment (f32 model), load, one file end to end"
    GPUSCRIBE_CPU_MATMUL=$mm RAYON_NUM_THREADS=$threads "${pin[@]}" "$BENCH" forward "$MODEL" cpu f32 "$seg" 1 "$REPEAT" | tag | tee -a "$out"
    GPUSCRIBE_CPU_MATMUL=$mm RAYON_NUM_THREADS=$threads "${pin[@]}" "$BENCH" e2e "$MODEL" cpu f32 "$seg" "$REPEAT" | tag | tee -a "$out"
    GPUSCRIBE_CPU_MATMUL=$mm RAYON_NUM_THREADS=$threads "${pin[@]}" "$BENCH" ids "$MODEL" cpu f32 "$seg" "$WORK/ids_ours_$mm.json"
done

echo "::: FunASR: the same forward (fp32, and bf16 autocast: its best CPU configuration) and generate() on the same segment"
(cd tools/reference && PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$threads "${pin[@]}" "$PYTHON" bench_forward.py \
    --model "$MODEL" --device cpu --threads "$threads" --batches 1 --precisions fp32,bf16 \
    --repeat "$REPEAT" --generate-batch "${GENERATE:-1}" --dump-ids "$WORK/ids_funasr.json" "$seg" 2>/dev/null | grep '^{') | tee -a "$out"

if [ -e "$MODEL_DIR/reference.json" ]; then
    for mm in $MATMULS; do
        echo "::: parity with FunASR's reference dump of this model (f32 model, $mm matrix products, CPU)"
        # Plain bf16 is a lower precision: its bar is issue 12's 99 % frame agreement.
        min=(); [ "$mm" = bf16 ] && min=(0.99)
        BENCH_AUDIO_DIR=tests/data/sensevoice/audio GPUSCRIBE_CPU_MATMUL=$mm RAYON_NUM_THREADS=$threads "${pin[@]}" \
            "$BENCH" parity "$MODEL_DIR" cpu f32 "${min[@]}" | sed "s/^{/{\"cpu_matmul\": \"$mm\", /" | tee -a "$out" || true
    done
fi
echo "::: load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PYTHON" tools/bench/cpu_side.py "$out" "$WORK/ids_funasr.json" $(for mm in $MATMULS; do echo "$WORK/ids_ours_$mm.json"; done)
