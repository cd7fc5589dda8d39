#!/usr/bin/env bash
# On a GPU machine: the GPU list, the real-NVML test (with the monitor's cost per sample), and our
# process list while another process (torch) holds about 2 GiB. Binaries come from BIN (default
# .device-bin): gpuscribe and the gpu_nvml test binary.
set -uo pipefail
BIN=${BIN:-.device-bin}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
echo "::: gpuscribe gpus"
"$BIN/gpuscribe" gpus | tee "$OUT/gpus.txt"
"$BIN/gpuscribe" gpus --json > "$OUT/gpus.json"; echo "exit $?"
python3 -c "import json,sys; json.load(open('$OUT/gpus.json')); print('gpus --json is valid JSON')"
echo "::: real NVML test"
"$BIN/gpu_nvml" --ignored --nocapture 2>&1 | tee "$OUT/nvml-test.txt" | tail -40
echo "::: a torch process holding 2 GiB"
rm -f /tmp/holder.pid
python3 - <<'PY' &
import os, time, torch
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
x.fill_(1); torch.cuda.synchronize()
open("/tmp/holder.pid", "w").write(str(os.getpid()))
time.sleep(40)
PY
for _ in $(seq 60); do [ -s /tmp/holder.pid ] && break; sleep 0.5; done
echo "holder pid: $(cat /tmp/holder.pid)"
"$BIN/gpuscribe" gpus | tee "$OUT/gpus-with-holder.txt"
"$BIN/gpuscribe" gpus --json > "$OUT/gpus-with-holder.json"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee -a "$OUT/gpus-with-holder.txt"
kill %1 2>/dev/null; wait
