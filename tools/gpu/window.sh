#!/usr/bin/env bash
# The window on a real GPU, as people first see it: the cuda build under Xvfb on a machine with an
# NVIDIA driver, transcribing long files with the release-size model, then offloading and releasing.
#
#   BIN=folder-with-cuda-binaries MODEL=model-folder OUT=results GL=unpacked-x-libs bash tools/gpu/window.sh WAV...
#
# GL holds Xvfb, Mesa (software GL for the window) and their libraries unpacked from the Debian
# packages that tools/gpu/x-libs.sh gathers (`for f in *.deb; do dpkg -x $f GL; done`, then
# stubs/libz3.so.4 into GL/usr/lib/x86_64-linux-gnu), for machines without a display server; leave it
# empty where Xvfb and libGL are installed. Screenshots are taken every SHOT_EVERY seconds (python3 with Pillow grabs the X screen)
# and, at each one, nvidia-smi's view of the GPU and of our worker, so the panels can be checked
# against it. The app offloads after OFFLOAD_S idle seconds and releases RELEASE_S seconds later.
set -uo pipefail
BIN=$(realpath "${BIN:-.device-bin}")
OUT=${OUT:-/tmp/out}
MODEL=$(realpath "$MODEL")
GL=${GL:-}
SHOT_EVERY=${SHOT_EVERY:-2}
DURATION_S=${DURATION_S:-80}
OFFLOAD_S=${OFFLOAD_S:-12}
RELEASE_S=${RELEASE_S:-20}
mkdir -p "$OUT/shots"
export HOME=${WINDOW_HOME:-/tmp/gs-window-home}
rm -rf "$HOME"; mkdir -p "$HOME"

if [ -n "$GL" ]; then
    lib="$GL/usr/lib/x86_64-linux-gnu"
    # Debian puts some libraries under /lib, others under /usr/lib.
    export LD_LIBRARY_PATH="$lib:$GL/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LIBGL_DRIVERS_PATH="$lib/dri" __EGL_VENDOR_LIBRARY_DIRS="$GL/usr/share/glvnd/egl_vendor.d"
    export XKB_CONFIG_ROOT="$GL/usr/share/X11/xkb"
    # Xvfb runs xkbcomp from its compiled-in folder.
    [ -x /usr/bin/xkbcomp ] || cp "$GL/usr/bin/xkbcomp" /usr/bin/xkbcomp
    XVFB="$GL/usr/bin/Xvfb"
else
    XVFB=Xvfb
fi
# Software GL for the window (Xvfb has no GPU behind it); the worker uses CUDA as always.
export __GLX_VENDOR_LIBRARY_NAME=mesa LIBGL_ALWAYS_SOFTWARE=1
export DISPLAY=:99
"$XVFB" :99 -screen 0 1280x820x24 -nolisten tcp ${GL:+-xkbdir "$GL/usr/share/X11/xkb"} >"$OUT/xvfb.log" 2>&1 &
xvfb=$!
sleep 2

# Settings as the window saves them (eframe storage, RON): the model folder and short idle timers.
# eframe lower-cases the app id for the folder name.
settings_dir="$HOME/.local/share/io.github.gpuscribe.gpuscribe"
mkdir -p "$settings_dir"
printf '{\n    "app": "(model_dir:Some(\\"%s\\"),residency:(offload:AfterSecs(%s),release_after_secs:Some(%s)),plot_window:OneMinute)",\n}\n' \
    "$MODEL" "$OFFLOAD_S" "$RELEASE_S" > "$settings_dir/app.ron"

export GPUSCRIBE_WORKER="$BIN/gpuscribe-worker"
start=$(date +%s.%N)
"$BIN/gpuscribe" --device "${DEVICE:-cuda:0}" "$@" >"$OUT/window.log" 2>&1 &
app=$!

shot=0
while :; do
    now=$(date +%s.%N)
    t=$(python3 -c "print(f'{$now-$start:05.1f}')")
    python3 -c "import sys; from PIL import ImageGrab; ImageGrab.grab(xdisplay=':99').save(sys.argv[1])" \
        "$OUT/shots/t${t}.png" 2>>"$OUT/grab.log"
    {
        echo "t=$t s"
        nvidia-smi --query-gpu=memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw,clocks.sm --format=csv,noheader
        nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
        "$BIN/gpuscribe" gpus --json 2>/dev/null | python3 -c "
import json, sys
g = json.load(sys.stdin)['gpus'][0]
m = g['memory']
print('gpuscribe gpus: used %d MiB of %d MiB, util %s %%, %s C, %.1f W, sm %s MHz' % (m['used_bytes'] >> 20, m['total_bytes'] >> 20, g['gpu_util_percent'], g['temperature_c'], g['power_draw_mw'] / 1000, g['sm_clock_mhz']))
for p in g['processes']:
    print('  process', p['pid'], p['name'], p['used_bytes'] >> 20, 'MiB')"
    } >> "$OUT/smi.log" 2>&1
    shot=$((shot + 1))
    python3 -c "import sys; sys.exit(0 if $now - $start < $DURATION_S else 1)" || break
    sleep "$SHOT_EVERY"
done
kill "$app" 2>/dev/null; sleep 1; kill "$xvfb" 2>/dev/null
echo "$shot screenshots in $OUT/shots; nvidia-smi beside each in $OUT/smi.log"
