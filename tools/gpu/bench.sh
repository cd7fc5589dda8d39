#!/usr/bin/env bash
# The GPU benchmarks behind BENCHMARKS.md, in one run on a CUDA machine (driver >= 580, CUDA 13).
#
#   BIN=folder-with-cuda-binaries OUT=results-folder bash tools/gpu/bench.sh [steps...]
#
# BIN holds the `--features cuda` release builds of gpuscribe, gpuscribe-worker and the examples
# sensevoice_bench and residency_bench. Python needs torch 2.11 and funasr 1.4.16 (see
# tools/reference/requirements.txt). Steps (default: all): elf full parity speed funasr best cpuside
# residency squeeze hour cpu cudatest live rss10h whisper nographs.
#   nographs ours with CUDA graphs off and on (GPUSCRIBE_CUDA_GRAPHS), forward and speed, same run
#   best     forward + argmax, ours (bf16, f16, f32) against FunASR at its best (fp32, autocast f16 and
#            bf16) at batch 16/32/64 in one run, plus FunASR's own autocast agreement and generate();
#            the table comes from tools/gpu/compare.py
#   cudatest tests/sensevoice_cuda.rs and tests/sensevoice_cuda_kernels.rs (BIN/sensevoice_cuda and
#            BIN/sensevoice_cuda_kernels: `cargo test --release --features cuda --test … --no-run`'s
#            binaries) with their ignored GPU tests
#   live     tools/bench/live_latency.py: `gpuscribe listen --from-wav` at real-time pace on cuda:0
#   rss10h   tools/bench/rss.sh: peak RSS of both processes for a 10 h WAV on cuda:0
#   whisper  random whisper tiny and base (tools/reference/whisper_generate.py), transformers'
#            timings (whisper_bench.py) and ours (BIN/whisper_bench) at f32/f16/bf16; needs transformers
#   cpuside  the same on the CPU cores of this machine (f32; FunASR also with bf16 autocast), one 30 s
#            segment, both with every core (CPU_THREADS, default nproc)
set -uo pipefail
BIN=$(realpath "${BIN:-.device-bin}")
OUT=${OUT:-/tmp/out}
WORK=${WORK:-/tmp/gs-bench}
mkdir -p "$OUT" "$WORK"
export GPUSCRIBE_WORKER="$BIN/gpuscribe-worker"
steps=${*:-elf full parity speed funasr best cpuside residency squeeze hour cpu cudatest live rss10h whisper}
has() { [[ " $steps " == *" $1 "* ]]; }
say() { echo; echo "::: $*"; }

if has elf; then
    say "which executables need the CUDA libraries (DT_NEEDED)"
    for b in gpuscribe gpuscribe-worker; do echo "$b: $(readelf -d "$BIN/$b" | grep NEEDED | grep -oE '\[[^]]+\]' | tr '\n' ' ')"; done
fi

if has full || [ ! -e "$WORK/full/model/model.pt" ]; then
    say "FunASR: release-size random model, reference dump on CUDA"
    ( cd tools/reference && PYTHONUNBUFFERED=1 python3 generate.py --full --out "$WORK/full" --device cuda 2>&1 | tail -3 )
    for s in 10 30 480 3600; do python3 tools/gpu/make_wav.py "$WORK/speech_${s}s.wav" "$s"; done
fi
MODEL=$WORK/full/model

if has cudatest; then
    say "GPU tests: FunASR parity in f32, fused kernels against candle ops, batch against single items"
    "$BIN/sensevoice_cuda" --ignored --test-threads 1 --nocapture 2>&1 | grep -vE "^$"
    # The kernels only release-size shapes reach (BIN/sensevoice_cuda_kernels, built the same way).
    [ -x "$BIN/sensevoice_cuda_kernels" ] && "$BIN/sensevoice_cuda_kernels" --ignored --test-threads 1 --nocapture 2>&1 | grep -vE "^$"
fi

if has parity; then
    say "parity with FunASR (f32, then bf16)"
    BENCH_AUDIO_DIR=tests/data/sensevoice/audio "$BIN/sensevoice_bench" parity "$WORK/full" cuda:0 f32
    BENCH_AUDIO_DIR=tests/data/sensevoice/audio "$BIN/sensevoice_bench" parity "$WORK/full" cuda:0 bf16
fi

if has speed; then
    say "our speed, bf16 (10 s clip end to end; batch of 16 x 30 s)"
    "$BIN/sensevoice_bench" speed "$MODEL" cuda:0 bf16 16 "$WORK/speech_10s.wav" "$WORK/speech_30s.wav"
    "$BIN/sensevoice_bench" speed "$MODEL" cuda:0 f32 16 "$WORK/speech_10s.wav" "$WORK/speech_30s.wav"
fi

if has funasr; then
    say "FunASR speed on the same GPU and inputs (fp32, torch)"
    ( cd tools/reference && python3 generate.py --bench --model "$MODEL" --device cuda --segment-s 10 --batch-size 1 --repeat 20 "$WORK/speech_10s.wav" 2>/dev/null | grep -vE "first_text|^funasr|^Notice|^If you|^\s+(sudo|#)" )
    ( cd tools/reference && python3 generate.py --bench --model "$MODEL" --device cuda --segment-s 30 --batch-size 16 --repeat 5 "$WORK/speech_480s.wav" 2>/dev/null | grep -vE "first_text|^funasr|^Notice|^If you|^\s+(sudo|#)" )
fi

if has best; then
    say "forward + argmax: ours against FunASR's best configuration, same GPU, same run"
    : > "$WORK/best.jsonl"
    batches=${BEST_BATCHES:-8,16,32,64}
    # FunASR first: its fp32 ids of the segment are the reference for our frame-id agreement.
    ( cd tools/reference && PYTHONUNBUFFERED=1 python3 bench_forward.py --model "$MODEL" --device cuda \
        --batches "$batches" --repeat 10 --generate-batch 16 --dump-ids "$WORK/funasr_fp32_ids.json" \
        "$WORK/speech_30s.wav" 2>/dev/null | grep '^{' ) | tee -a "$WORK/best.jsonl"
    for dt in bf16 f16 f32; do
        BENCH_REFERENCE_IDS="$WORK/funasr_fp32_ids.json" \
            "$BIN/sensevoice_bench" forward "$MODEL" cuda:0 "$dt" "$WORK/speech_30s.wav" "$batches" 10 | tee -a "$WORK/best.jsonl"
    done
    cp "$WORK/best.jsonl" "$OUT/" 2>/dev/null
    python3 tools/gpu/compare.py "$WORK/best.jsonl"
fi

if has nographs; then
    say "A/B: ours with CUDA graphs off (GPUSCRIBE_CUDA_GRAPHS=0), then on, same shapes"
    for graphs in 0 1; do
        for dt in f16 bf16; do
            GPUSCRIBE_CUDA_GRAPHS=$graphs "$BIN/sensevoice_bench" forward "$MODEL" cuda:0 "$dt" "$WORK/speech_30s.wav" "${BEST_BATCHES:-8,16,32,64}" 10 \
                | python3 -c "import json,sys; [print('graphs=$graphs', d['dtype'], 'b%d' % d['batch'], '%.2f ms' % d['median_ms'], '%.0fx' % d['x_realtime_median'], 'kept', d.get('cuda_graphs_kept')) for d in map(json.loads, sys.stdin)]"
        done
        GPUSCRIBE_CUDA_GRAPHS=$graphs "$BIN/sensevoice_bench" speed "$MODEL" cuda:0 bf16 16 "$WORK/speech_10s.wav" "$WORK/speech_30s.wav"
    done
fi

if has cpuside; then
    threads=${CPU_THREADS:-$(nproc)}
    say "CPU: one 30 s segment, forward + argmax, ours against FunASR, $threads threads each"
    : > "$WORK/cpu.jsonl"
    RAYON_NUM_THREADS=$threads "$BIN/sensevoice_bench" forward "$MODEL" cpu f32 "$WORK/speech_30s.wav" 1 3 | tee -a "$WORK/cpu.jsonl"
    ( cd tools/reference && PYTHONUNBUFFERED=1 python3 bench_forward.py --model "$MODEL" --device cpu --threads "$threads" \
        --batches 1 --precisions fp32,bf16 --repeat 3 "$WORK/speech_30s.wav" 2>/dev/null | grep '^{' ) | tee -a "$WORK/cpu.jsonl"
    python3 tools/gpu/compare.py "$WORK/cpu.jsonl"
fi

if has residency; then
    say "worker VRAM through its life, cold load, restore, 500 offload/restore cycles"
    "$BIN/residency_bench" "$MODEL" 0 500
fi

if has squeeze; then
    say "another process holds all but 300 MiB; the job still completes"
    python3 - <<'PY' &
import time, torch
free, total = torch.cuda.mem_get_info()
hold = torch.empty(free - 300 * 2**20 - 600 * 2**20, dtype=torch.uint8, device="cuda")  # minus its own context
torch.cuda.synchronize()
print(f"holder: free after = {torch.cuda.mem_get_info()[0] >> 20} MiB", flush=True)
open("/tmp/squeeze.ready", "w").write("1")
time.sleep(300)
PY
    rm -f /tmp/squeeze.ready; for _ in $(seq 120); do [ -e /tmp/squeeze.ready ] && break; sleep 0.5; done
    nvidia-smi --query-gpu=memory.used,memory.free --format=csv
    /usr/bin/time -f "wall %e s, max RSS %M KiB" "$BIN/gpuscribe" transcribe --device auto --model-dir "$MODEL" --format json "$WORK/speech_30s.wav" > "$WORK/squeeze.json"
    echo "exit $?; segments: $(python3 -c "import json; d=json.load(open('$WORK/squeeze.json')); print(len(d[0]['segments']), d[0]['duration_s'])")"
    kill %1; wait
fi

if has hour; then
    say "a 1-hour file end to end on GPU 0 (bf16), with peak VRAM of our worker"
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader -lms 100 > "$WORK/hour-vram.csv" &
    start=$(date +%s.%N)
    # stderr (the CLI's progress) with the seconds since the start in front of each line.
    "$BIN/gpuscribe" transcribe --device cuda:0 --model-dir "$MODEL" --format json "$WORK/speech_3600s.wav" \
        2> >(python3 -u -c 'import sys, time
t = float(sys.argv[1])
for line in sys.stdin:
    for part in line.replace("\r", "\n").splitlines():
        print(f"{time.time() - t:7.3f}  {part}")' "$start" > "$WORK/hour-stderr.txt") > "$WORK/hour.json"
    rc=$?; end=$(date +%s.%N)
    kill %1; wait
    sort -u -k2 "$WORK/hour-stderr.txt" | sort -n | awk '!seen[substr($0, 10, 30)]++' | head -40
    echo "exit $rc; wall $(python3 -c "print(round($end-$start,2))") s (process start, CUDA init, load, decode, transcribe)"
    python3 - "$WORK" <<'PY'
import csv, json, sys
w = sys.argv[1]
d = json.load(open(f"{w}/hour.json"))[0]
print("duration_s", d["duration_s"], "segments", len(d["segments"]))
peak = 0
for row in csv.reader(open(f"{w}/hour-vram.csv")):
    if len(row) == 3 and "gpuscribe" in row[1]:
        peak = max(peak, int(row[2].strip().split()[0]))
print("peak VRAM of gpuscribe-worker (MiB, nvidia-smi every 100 ms):", peak)
PY
fi

if has cpu; then
    say "starts everywhere: without the CUDA runtime on the library path"
    # NO_CUDA_LIBRARY_PATH: the library path without CUDA (e.g. where a carried libasound is).
    nocuda="env LD_LIBRARY_PATH=${NO_CUDA_LIBRARY_PATH:-}"
    $nocuda "$BIN/gpuscribe-worker" < /dev/null; echo "worker exit $?"
    $nocuda "$BIN/gpuscribe" gpus | head -3
    $nocuda "$BIN/gpuscribe" transcribe --device auto --model-dir tests/data/sensevoice/tiny --format json tests/data/sensevoice/audio/zh_mid.wav | head -12
    echo "exit $?"
fi

if has live; then
    say "live transcription latency on cuda:0 (gpuscribe listen --from-wav at real-time pace)"
    python3 tools/bench/live_latency.py "$BIN/gpuscribe" "$MODEL" cuda:0
fi

if has rss10h; then
    say "peak RSS of gpuscribe transcribe and its worker, 10 h WAV, cuda:0"
    bin_dir=$BIN
    BIN="$bin_dir/gpuscribe" WORKER="$bin_dir/gpuscribe-worker" MODEL="$MODEL" DEVICE=cuda:0 HOURS="1 10" \
        MP3_HOURS="" OUT="$WORK/rss" bash tools/bench/rss.sh
fi

if has whisper; then
    say "Whisper tiny and base (random weights of the real configs) against transformers, same GPU"
    for p in tiny base; do
        ( cd tools/reference && python3 whisper_generate.py --preset $p --model-only --out "$WORK/w$p" 2>&1 | tail -1 )
        ( cd tools/reference && python3 whisper_bench.py --model "$WORK/w$p/model" --device cuda:0 \
            --dtypes float32,float16,bfloat16 --out "$WORK/ref-$p.json" 2>&1 | tail -4 )
        "$BIN/whisper_bench" "$WORK/w$p/model" "$WORK/ref-$p.json" cuda:0 f32,f16,bf16
    done
fi
