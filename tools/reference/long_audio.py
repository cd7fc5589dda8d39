"""Token times on a file longer than one model segment (tests/data/sensevoice/long/).

The Rust engine cuts long audio into <= 30 s segments at the quietest 100 ms of each window's second
half (src/engine/segment.rs, `split_at_pauses`), transcribes each segment and moves its token times by
the segment's start. FunASR does the same with VAD segments (`AutoModel.inference_with_vad` adds the
segment start in ms to every timestamp). Here FunASR's own `generate(output_timestamp=True)` runs on
each segment of the same cut, and the times are moved by the segment start the same way.

The tiny model's speech frames emit random pieces. FunASR aligns the pieces of
`EncodeAsPieces(text)[4:]`, which for random pieces need not be the decoded ids (a `ing`+`se` run
re-encodes as `ings`+`e`), so the CTC head's bias is lowered for every piece that could re-encode
differently: what remains are single characters of unspaced scripts that occur in no other piece, and
whole `▁word` pieces. The tags' bias drops a little too, so that they mostly stay on the prompt frames. The head (weight and lowered bias) is stored in long/ctc_lo.safetensors; the rest of the model is tiny/.
"""

import json
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

SAMPLE_RATE = 16000
MAX_SEGMENT_S = 30.0
MIN_SEGMENT_S = 15.0
FRAME_SAMPLES = 160
SMOOTH_FRAMES = 10
# Clips and gaps (seconds of digital silence) laid end to end: 52.4 s, two segments (28.4 s + 24 s).
LAYOUT = [("ja_long", 0.4), ("zh_mid", 1.3), ("en_short", 0.2), ("ja_long", 2.1), ("zh_mid", 0.3),
          ("en_short", 0.9), ("ja_long", 0.5), ("zh_mid", 1.7), ("ja_long", 0.2), ("en_short", 1.1),
          ("ja_long", 0.6), ("zh_mid", 0.4), ("ja_long", 1.9), ("en_short", 0.3), ("zh_mid", 0.8),
          ("ja_long", 1.2), ("en_short", 0.5)]
BANNED_BIAS = -1000.0
# Lowered by this much, tags stay on the prompt frames (checked below) and leave all but a few
# speech frames; those few are kept: FunASR aligns them like any piece, and subtitles must drop them.
TAG_BIAS_DROP = 4.5


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def quietest_point(x: np.ndarray, start: int, end: int) -> int:
    """Port of segment.rs `quietest_point` with the same f32 arithmetic in the same order."""
    sq = (x[start:end] * x[start:end]).astype(np.float32)
    energy = []
    for a in range(0, len(sq), FRAME_SAMPLES):
        energy.append(np.cumsum(sq[a:a + FRAME_SAMPLES], dtype=np.float32)[-1])
    if len(energy) <= SMOOTH_FRAMES:
        return end
    window = np.cumsum(np.array(energy[:SMOOTH_FRAMES], dtype=np.float32), dtype=np.float32)[-1]
    best = (window, 0)
    for i in range(1, len(energy) - SMOOTH_FRAMES + 1):
        window = np.float32(window + np.float32(energy[i + SMOOTH_FRAMES - 1] - energy[i - 1]))
        if window <= best[0]:
            best = (window, i)
    # The middle of the quiet run, as the Rust code cuts.
    cut = start + (best[1] + SMOOTH_FRAMES // 2) * FRAME_SAMPLES
    return min(max(cut, start), end)


def split_at_pauses(x: np.ndarray) -> list[tuple[int, int]]:
    """Port of segment.rs `split_at_pauses(samples, 30, 15)`."""
    max_len = int(MAX_SEGMENT_S * SAMPLE_RATE)
    min_len = min(int(MIN_SEGMENT_S * SAMPLE_RATE), max_len)
    out, start = [], 0
    while len(x) - start > max_len:
        cut = quietest_point(x, start + min_len, start + max_len)
        out.append((start, cut))
        start = cut
    if start < len(x) or not out:
        out.append((start, len(x)))
    return out


def allowed_pieces(sp) -> list[int]:
    """Ids whose decoded text always re-encodes to themselves, wherever they stand."""
    n = sp.GetPieceSize()
    pieces = [sp.IdToPiece(i) for i in range(n)]
    chars_elsewhere: dict[str, int] = {}
    for p in pieces:
        for c in set(p.lstrip("▁")):
            chars_elsewhere[c] = chars_elsewhere.get(c, 0) + 1
    out = []
    for i, p in enumerate(pieces):
        if sp.IsControl(i) or sp.IsUnknown(i) or p.startswith("<|"):
            continue
        if len(p) == 1 and ord(p) > 0x2E80 and chars_elsewhere.get(p, 0) == 1:
            out.append(i)
        elif p.startswith("▁") and len(p) > 2 and p[1:].isascii() and p[1:].isalpha():
            if sp.EncodeAsPieces(" " + p[1:]) == [p] and sp.EncodeAsPieces("x " + p[1:])[-1] == p:
                out.append(i)
    return out


def run(m, sp, audio_dir: Path, out_dir: Path, taps_class) -> None:
    """Writes out_dir/{long_mix.wav, ctc_lo.safetensors, long_audio.json}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = {stem: read_wav(audio_dir / f"{stem}.wav") for stem, _ in LAYOUT}
    parts = []
    for stem, gap_s in LAYOUT:
        parts += [clips[stem], np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype="<i2")]
    pcm = np.concatenate(parts)
    write_wav(out_dir / "long_mix.wav", pcm)
    x = pcm.astype(np.float32) / np.float32(32768.0)
    ranges = split_at_pauses(x)
    if len(ranges) < 2:
        raise RuntimeError(f"long audio: {len(ranges)} segment(s)")

    lin = m.model.ctc.ctc_lo
    saved = (lin.weight.detach().clone(), lin.bias.detach().clone())
    keep = torch.zeros(lin.bias.shape[0], dtype=torch.bool)
    keep[0] = True  # blank
    allowed = allowed_pieces(sp)
    keep[allowed] = True
    bias = torch.where(keep, saved[1], torch.full_like(saved[1], BANNED_BIAS))
    tags = [i for i in range(sp.GetPieceSize()) if sp.IdToPiece(i).startswith("<|")]
    bias[tags] = saved[1][tags] - TAG_BIAS_DROP

    # FunASR's token times, as its own inference() computes them: record what reaches post().
    from funasr.models.sense_voice.model import SenseVoiceSmall

    captured = []
    original_post = SenseVoiceSmall.post

    def post(self, timestamp):
        captured.append([[t[0], float(t[1]), float(t[2])] for t in timestamp])
        return original_post(self, timestamp)

    segments = []
    with torch.no_grad():
        lin.bias.copy_(bias)
    SenseVoiceSmall.post = post
    tmp = tempfile.TemporaryDirectory()
    try:
        for start, end in ranges:
            captured.clear()
            # A file per segment (an array input would make FunASR draw a random key).
            seg_wav = Path(tmp.name) / f"segment_{start}.wav"
            write_wav(seg_wav, pcm[start:end])
            with taps_class(m.model) as taps:
                res = m.generate(input=str(seg_wav), language="auto", use_itn=False,
                                 output_timestamp=True)[0]
            text = res["text"]
            tokens = sp.EncodeAsPieces(text)[4:]
            aligned = [t for ids in sp.EncodeAsIds(tokens) for t in (ids or [124])]
            frame_ids = torch.unique_consecutive(taps.out["logits"][0].argmax(-1))
            greedy = [int(i) for i in frame_ids if int(i) != 0][4:]
            if not all(p.startswith("<|") for p in sp.EncodeAsPieces(text)[:4]):
                raise RuntimeError(f"long audio: segment {start}..{end} lacks its 4 prompt tags: {text}")
            if aligned != greedy or len(captured) != 1:
                raise RuntimeError(f"long audio: segment {start}..{end} re-encodes differently")
            offset_ms = start * 1000 // SAMPLE_RATE
            if offset_ms * SAMPLE_RATE != start * 1000:
                raise RuntimeError(f"long audio: cut {start} is not on a whole millisecond")
            segments.append({
                "start_sample": start, "end_sample": end, "offset_ms": offset_ms, "text": text,
                "tokens": [{"token": t, "start_s": s, "end_s": e} for t, s, e in captured[0]],
                "timestamp": res["timestamp"], "words": res["words"],
            })
    finally:
        tmp.cleanup()
        SenseVoiceSmall.post = original_post
        with torch.no_grad():
            lin.weight.copy_(saved[0])
            lin.bias.copy_(saved[1])
    # The merge inference_with_vad does: ms timestamps + segment start, lists concatenated.
    merged_ts, merged_words, merged_tokens = [], [], []
    for seg in segments:
        off = seg["offset_ms"]
        merged_ts += [[a + off, b + off] for a, b in seg["timestamp"]]
        merged_words += seg["words"]
        merged_tokens += [{"token": t["token"], "start_ms": round(t["start_s"] * 1000) + off,
                           "end_ms": round(t["end_s"] * 1000) + off} for t in seg["tokens"]]
    save_file({"ctc.ctc_lo.weight": saved[0].contiguous(), "ctc.ctc_lo.bias": bias.contiguous()},
              str(out_dir / "ctc_lo.safetensors"),
              metadata={"generator": "tools/reference/long_audio.py"})
    data = {
        "generator": "tools/reference/generate.py (long_audio.py)", "wav": "long/long_mix.wav",
        "num_samples": int(len(pcm)), "weights": "tiny/ with ctc.ctc_lo.{weight,bias} from long/ctc_lo.safetensors",
        "language": "auto", "use_itn": False, "allowed_piece_count": len(allowed),
        "segments": segments, "merged": {"raw_text": " ".join(s["text"] for s in segments),
                                         "timestamp": merged_ts, "words": merged_words,
                                         "tokens": merged_tokens},
    }
    (out_dir / "long_audio.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n",
                                             encoding="utf-8")
