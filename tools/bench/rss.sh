#!/usr/bin/env bash
# Peak host memory (RSS) of `gpuscribe transcribe` and of its worker process, and wall time,
# for long generated files: WAVs of HOURS hours and MP3s of MP3_HOURS hours.
#
#   tools/bench/rss.sh                     # 1, 3, 12 and 24 h WAV, 10 h MP3, tiny model, CPU
#   BIN=target/release/gpuscribe MODEL=~/.cache/gpuscribe/models/SenseVoiceSmall DEVICE=cuda:0 \
#     HOURS="10" MP3_HOURS="" tools/bench/rss.sh
#
# BIN: the gpuscribe binary (default: $CARGO_TARGET_DIR/debug/gpuscribe, built if missing);
#   its worker is the gpuscribe-worker beside it unless WORKER says otherwise.
# MODEL: the model folder (default: the tiny random test model, tests/data/sensevoice/tiny).
# DEVICE: cpu (default) or cuda:N.  HOURS, MP3_HOURS: lengths (default "1 3 12 24" and "10").
# FORMAT: the output format (default json).  ARGS: more options for `transcribe` (e.g.
#   --no-history).  The history goes to a library in the temporary folder (GPUSCRIBE_DATA_DIR),
#   not the user's.
# OUT: where the generated audio goes (default: a temporary folder, deleted at the end).
#
# Audio: the three speech clips of tests/data/sensevoice/audio with 0.6 s pauses (7 s in all,
# 16 kHz mono s16) repeated with sox; the MP3 is the committed fixture tests/data/audio/speech.mp3
# (2.4 s, 44.1 kHz stereo, 64 kbit/s) repeated whole, each copy with its ID3 tag and LAME header
# (the first header states 2.4 s, so progress goes by the bytes read).
#
# Method: the CLI runs under a sampler that reads VmHWM (the kernel's peak resident set size)
# from /proc/PID/status of the CLI and of every child process every 100 ms. VmHWM only grows,
# so the last reading before a process exits is its peak, short of a new peak in its last
# 100 ms. GNU time's maximum RSS (the larger of the two processes) is printed as a check.
# One JSON line per file on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C
target="${CARGO_TARGET_DIR:-target}"
bin="${BIN:-$target/debug/gpuscribe}"
if [ -z "${BIN:-}" ] && [ ! -x "$bin" ]; then
  cargo build --locked --bin gpuscribe --bin gpuscribe-worker >&2
fi
worker="${WORKER:-$(dirname "$bin")/gpuscribe-worker}"
model="${MODEL:-tests/data/sensevoice/tiny}"
device="${DEVICE:-cpu}"
read -r -a hours <<<"${HOURS-1 3 12 24}"
read -r -a extra <<<"${ARGS-}"
format="${FORMAT:-json}"
read -r -a mp3_hours <<<"${MP3_HOURS-10}"
# Without sox (e.g. a GPU machine), tools/bench/wav_concat.py joins and repeats the WAVs.
have_sox=$(command -v sox >/dev/null && echo 1 || true)
if [ -n "${OUT:-}" ]; then tmp="$OUT"; mkdir -p "$tmp"; else
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fi

clips=tests/data/sensevoice/audio
if [ -n "$have_sox" ]; then
  # -D: no dither, so the same file comes out every time.
  sox -D "$clips/ja_long.wav" "$clips/zh_mid.wav" "$clips/en_short.wav" -p pad 0 0.6 \
    | sox -D - -r 16000 -c 1 -b 16 "$tmp/unit.wav"
  unit_s=$(soxi -D "$tmp/unit.wav")
else
  unit_s=$(python3 tools/bench/wav_concat.py unit "$tmp/unit.wav" 0.6 \
    "$clips/ja_long.wav" "$clips/zh_mid.wav" "$clips/en_short.wav")
fi

# Prints "peak_kib_cli peak_kib_worker" for the command line "$@", run to its end; its own
# stdout goes to $tmp/out.txt, its stderr to $tmp/err.txt, GNU time's report to $tmp/time.txt.
sample_peaks() {
  /usr/bin/time -v -o "$tmp/time.txt" "$@" >"$tmp/out.txt" 2>"$tmp/err.txt" &
  local timer=$! cli="" w="" cli_peak=0 worker_peak=0 v
  while kill -0 "$timer" 2>/dev/null; do
    [ -n "$cli" ] || cli=$(ps --ppid "$timer" -o pid= | head -n1 | tr -d ' ')
    if [ -n "$cli" ]; then
      v=$(awk '/^VmHWM:/ {print $2}' "/proc/$cli/status" 2>/dev/null || true)
      [ -n "$v" ] && [ "$v" -gt "$cli_peak" ] && cli_peak=$v
      for w in $(ps --ppid "$cli" -o pid= 2>/dev/null); do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$w/status" 2>/dev/null || true)
        [ -n "$v" ] && [ "$v" -gt "$worker_peak" ] && worker_peak=$v
      done
    fi
    sleep 0.1
  done
  wait "$timer" || { echo "failed: $*" >&2; tail -n 20 "$tmp/err.txt" >&2; return 1; }
  echo "$cli_peak $worker_peak"
}

run_one() { # kind hours file
  local kind=$1 h=$2 file=$3 start end peaks
  echo "transcribing $h h $kind ($(stat -c %s "$file") bytes) on $device" >&2
  start=$(date +%s.%N)
  peaks=$(sample_peaks env GPUSCRIBE_WORKER="$worker" GPUSCRIBE_DATA_DIR="$tmp/data" "$bin" \
    transcribe --device "$device" --model-dir "$model" --format "$format" ${extra[@]+"${extra[@]}"} \
    "$file")
  end=$(date +%s.%N)
  local time_kib
  time_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tmp/time.txt")
  python3 - "$kind" "$h" "$file" "$start" "$end" $peaks "$time_kib" "$tmp/out.txt" "$format" \
    "${ARGS-}" <<'PY'
import json, os, sys
kind, h, path, start, end, cli, worker, time_kib, out, fmt, args = sys.argv[1:]
wall = float(end) - float(start)
if fmt == "json":
    doc = json.load(open(out))
    t = doc[0] if isinstance(doc, list) else doc
else:
    # Other formats: the length from the decoder's line on stderr is not printed; use the WAV's.
    import wave
    try:
        with wave.open(path) as w:
            seconds = w.getnframes() / w.getframerate()
    except Exception:
        seconds = float(h) * 3600
    t = {"duration_s": seconds, "segments": []}
print(json.dumps({
    "file": f"{h} h {kind}", "format": fmt, "args": args, "bytes": os.path.getsize(path),
    "audio_s": round(t["duration_s"], 1), "segments": len(t["segments"]),
    "peak_rss_cli_mib": round(int(cli) / 1024, 1),
    "peak_rss_worker_mib": round(int(worker) / 1024, 1),
    "gnu_time_max_rss_mib": round(int(time_kib) / 1024, 1),
    "wall_s": round(wall, 1), "wall_s_per_audio_h": round(wall / (t["duration_s"] / 3600), 1),
    "output_bytes": os.path.getsize(out),
    "output_bytes_per_audio_h": round(os.path.getsize(out) / (t["duration_s"] / 3600)),
    "tokens": len(t.get("tokens") or []), "words": len(t.get("words") or []),
    "text_bytes": len(t.get("text", "").encode()),
}))
PY
}

for h in "${hours[@]}"; do
  reps=$(python3 -c "import math; print(math.ceil($h * 3600 / $unit_s) - 1)")
  if [ -n "$have_sox" ]; then
    sox "$tmp/unit.wav" "$tmp/long.wav" repeat "$reps"
  else
    python3 tools/bench/wav_concat.py repeat "$tmp/unit.wav" "$tmp/long.wav" "$reps" >/dev/null
  fi
  run_one wav "$h" "$tmp/long.wav"
  rm -f "$tmp/long.wav"
done
mp3=tests/data/audio/speech.mp3
for h in "${mp3_hours[@]}"; do
  # Whole copies of the fixture, each with its ID3 tag and LAME header (the first header states
  # 2.4 s: the decoder goes on past it, and progress goes by the bytes read).
  one_s=$(python3 -c "import os; print(os.path.getsize('$mp3') / 8000)")  # 64 kbit/s: 8 kB/s
  reps=$(python3 -c "import math; print(math.ceil($h * 3600 / $one_s))")
  python3 - "$mp3" "$tmp/long.mp3" "$reps" <<'PY'
import sys
src, dst, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
with open(dst, "wb") as f:
    for _ in range(reps):
        f.write(data)
PY
  run_one mp3 "$h" "$tmp/long.mp3"
  rm -f "$tmp/long.mp3"
done
