#!/usr/bin/env bash
# Peak RSS of preparing long WAVs for the model, whole-buffer vs streaming (examples/stream_rss.rs).
# The WAVs (16 kHz mono s16, speech-like tones with pauses) are generated with sox into a temporary
# folder and deleted afterwards; nothing is committed.
#
#   tools/bench/stream_rss.sh [HOURS...]     # default: 1 10
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -gt 0 ]; then hours=("$@"); else hours=(1 10); fi
# PROFILE=release for an optimised build; the default reuses the dev build (dependencies are
# optimised there too), which is what the recorded runs used.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
profile="${PROFILE:-dev}"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
bin="${BIN:-$CARGO_TARGET_DIR/$dir/examples/stream_rss}"
# BIN=path/to/stream_rss skips the build.
[ -n "${BIN:-}" ] || cargo build --locked --profile "$profile" --example stream_rss >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# One minute: 7 s of a 180 Hz tone, 0.4 s of near silence, repeated (pauses for the cutter).
sox -n -r 16000 -c 1 -b 16 "$tmp/tone.wav" synth 7 sine 180 vol 0.4
sox -n -r 16000 -c 1 -b 16 "$tmp/gap.wav" synth 0.4 sine 180 vol 0.001
sox "$tmp/tone.wav" "$tmp/gap.wav" "$tmp/unit.wav"
for h in "${hours[@]}"; do
  reps=$(( h * 3600 * 10 / 74 ))
  sox "$tmp/unit.wav" "$tmp/long.wav" repeat "$reps"
  for mode in stream whole; do
    "$bin" "$mode" "$tmp/long.wav" | sed "s/^{/{\"hours\":$h,\"file_bytes\":$(stat -c %s "$tmp/long.wav"),/"
  done
  rm -f "$tmp/long.wav"
done
