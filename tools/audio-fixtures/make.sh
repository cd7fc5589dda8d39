#!/usr/bin/env bash
# Regenerates the audio fixtures in tests/data/audio from one spoken sentence.
#
# Needs: espeak-ng, sox (soxi), ffmpeg (libmp3lame, libvorbis, aac, libopus), jq.
# Usage: tools/audio-fixtures/make.sh [output-dir]   (default: tests/data/audio)
#
# Every expected value the tests use (frame counts, rates, durations) is measured here by
# soxi/ffprobe and written to fixtures.json, so nothing in the tests is typed in by hand.
set -euo pipefail
export LC_ALL=C

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/tests/data/audio}"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. The spoken clip: espeak-ng (22.05 kHz mono), trimmed of leading/trailing silence, then
#    44.1 kHz stereo with unequal channels so a wrong downmix would show in the waveform test.
espeak-ng -v en-us -s 170 -w "$tmp/espeak.wav" "GPU Scribe turns speech into text."
sox "$tmp/espeak.wav" "$tmp/trimmed.wav" silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse
sox "$tmp/trimmed.wav" -r 44100 -b 16 -e signed-integer "$out/speech_44k_stereo.wav" \
    remix 1v0.9 1v0.5 rate -v 44100 pad 0.05 0.05

src="$out/speech_44k_stereo.wav"

# 2. The 16 kHz mono reference the decoder's output is compared with (sox's own resampler).
sox "$src" -r 16000 -c 1 -b 16 -e signed-integer "$out/ref_16k_mono.wav" rate -v 16000

# 3. Compressed copies of the same clip.
ffmpeg -v error -y -i "$src" -c:a libmp3lame -b:a 64k "$out/speech.mp3"
ffmpeg -v error -y -i "$src" -c:a flac -sample_fmt s16 "$out/speech.flac"
ffmpeg -v error -y -i "$src" -c:a libvorbis -q:a 2 "$out/speech.ogg"
ffmpeg -v error -y -i "$src" -c:a aac -b:a 64k "$out/speech.m4a"
ffmpeg -v error -y -i "$src" -c:a libopus -b:a 24k "$out/speech.opus"

# 4. Bit-depth variants, mono 11.025 kHz (a rate that needs upsampling), to keep them small.
sox "$src" -r 11025 -c 1 -b 8 -e unsigned-integer "$out/speech_u8.wav" rate -v 11025
sox "$src" -r 11025 -c 1 -b 16 -e signed-integer "$out/speech_s16.wav" rate -v 11025
sox "$src" -r 11025 -c 1 -b 24 -e signed-integer "$out/speech_s24.wav" rate -v 11025
sox "$src" -r 11025 -c 1 -b 32 -e signed-integer "$out/speech_s32.wav" rate -v 11025
sox "$src" -r 11025 -c 1 -b 32 -e floating-point "$out/speech_f32.wav" rate -v 11025

# 5. Bad files.
: > "$out/bad_empty.wav"
# Deterministic "random" bytes (awk's seeded generator), so reruns produce the same file.
awk 'BEGIN { srand(42); for (i = 0; i < 4096; i++) printf "%c", int(rand() * 256) }' \
    > "$out/bad_random.mp3"
printf 'This is a text file, not audio.\nIt only has a .wav name.\n' > "$out/bad_text.wav"
# The first 40 % of the MP3: it stops in the middle of a frame.
mp3_bytes=$(stat -c %s "$out/speech.mp3")
head -c $((mp3_bytes * 2 / 5)) "$out/speech.mp3" > "$out/bad_truncated.mp3"
# A valid WAV header that promises audio, followed by zero sample bytes.
sox -n -r 16000 -c 1 -b 16 "$out/bad_zero_length.wav" trim 0 0
# Corrupt frames in the middle: overwrite 1.2 kB after the first 35 % with a repeated pattern
# (all bits set and cleared), which breaks frame headers, side info and the bit reservoir.
cp "$out/speech.mp3" "$out/bad_corrupt_middle.mp3"
offset=$((mp3_bytes * 35 / 100))
awk 'BEGIN { for (i = 0; i < 1200; i++) printf "%c", (i % 3 == 0) ? 255 : ((i % 3 == 1) ? 0 : 170) }' \
    > "$tmp/garbage.bin"
dd if="$tmp/garbage.bin" of="$out/bad_corrupt_middle.mp3" bs=1 seek="$offset" conv=notrunc status=none

# 6. fixtures.json: what the tests compare against, measured from the files themselves.
src_frames=$(soxi -s "$src")
src_rate=$(soxi -r "$src")
ref_frames=$(soxi -s "$out/ref_16k_mono.wav")
{
    echo "{"
    echo "  \"generator\": \"tools/audio-fixtures/make.sh\","
    echo "  \"source\": { \"file\": \"speech_44k_stereo.wav\", \"frames\": $src_frames, \"sample_rate_hz\": $src_rate, \"channels\": $(soxi -c "$src") },"
    echo "  \"reference_16k\": { \"file\": \"ref_16k_mono.wav\", \"frames\": $ref_frames, \"sample_rate_hz\": $(soxi -r "$out/ref_16k_mono.wav") },"
    echo "  \"decodable\": ["
    first=1
    for f in speech_44k_stereo.wav speech.mp3 speech.flac speech.ogg speech.m4a \
        speech_u8.wav speech_s16.wav speech_s24.wav speech_s32.wav speech_f32.wav; do
        rate=$(ffprobe -v error -select_streams a:0 -show_entries stream=sample_rate -of csv=p=0 "$out/$f")
        ch=$(ffprobe -v error -select_streams a:0 -show_entries stream=channels -of csv=p=0 "$out/$f")
        [ $first -eq 1 ] || echo ","
        first=0
        printf '    { "file": "%s", "sample_rate_hz": %s, "channels": %s }' "$f" "$rate" "$ch"
    done
    echo ""
    echo "  ]"
    echo "}"
} > "$out/fixtures.json"
jq . "$out/fixtures.json" > /dev/null

du -ch "$out"/* | tail -n 1
