#!/usr/bin/env python3
"""Spoken clips for the real-weights Whisper test: espeak-ng reads a few sentences in English,
German, French and Spanish (16 kHz mono WAV via sox), and transformers'
WhisperForConditionalGeneration transcribes each with the converted whisper-base
(tools/reference/whisper_from_ct2.py), so that our word error rate stands beside the
reference implementation's on the same audio and weights.

    sudo apt-get install -y espeak-ng sox
    /work/venv-ref/bin/python tools/reference/whisper_espeak.py --model DIR --out CLIPS

Writes CLIPS/<name>.wav and CLIPS/clips.json:
  {"espeak_ng": "...", "transformers": "...", "clips": [
     {"name", "language", "text" (what espeak-ng read), "wav",
      "reference": {"text", "ids", "wer"}}  ],
   "reference_wer": overall WER of transformers}

WER: words are lower-cased, punctuation other than apostrophes removed, then Levenshtein over
words divided by the number of words read.
"""

import argparse
import json
import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import torch

SENTENCES = [
    ("en_fox", "en", "en-us", "The quick brown fox jumps over the lazy dog."),
    ("en_weather", "en", "en-us", "Tomorrow the weather will be sunny with a light wind from the west."),
    ("en_meeting", "en", "en-us", "Please send me the report before the meeting on Friday afternoon."),
    ("de_bahnhof", "de", "de", "Der Zug nach Berlin fährt heute um acht Uhr vom Hauptbahnhof ab."),
    ("fr_marche", "fr", "fr-fr", "Le marché ouvre tous les samedis matin sur la place de la mairie."),
    ("es_biblioteca", "es", "es", "La biblioteca de la ciudad cierra a las nueve de la noche."),
]


def normalize(text):
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    return text.split()


def word_errors(ref, hyp):
    r, h = normalize(ref), normalize(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)], len(r)


def read_wav(path):
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float32) / 32768.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the converted whisper-base folder")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    from tokenizers import Tokenizer

    model = WhisperForConditionalGeneration.from_pretrained(args.model).eval()
    fe = WhisperFeatureExtractor.from_pretrained(args.model)
    tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    clips = []
    errors = words = 0
    for name, language, voice, text in SENTENCES:
        raw = out / f"{name}.raw.wav"
        wav = out / f"{name}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
        raw.unlink()
        audio = read_wav(wav)
        feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language=language, task="transcribe", return_timestamps=False,
                                 do_sample=False, num_beams=1, max_new_tokens=128)[0].tolist()
        hyp = tok.decode(ids, skip_special_tokens=True).strip()
        e, n = word_errors(text, hyp)
        errors, words = errors + e, words + n
        clips.append({"name": name, "language": language, "voice": voice, "text": text, "wav": wav.name,
                      "reference": {"text": hyp, "ids": ids, "wer": e / n}})
        print(f"{name}: {e}/{n}  {hyp}")
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    meta = {"espeak_ng": espeak, "transformers": __import__("transformers").__version__,
            "clips": clips, "reference_wer": errors / words}
    (out / "clips.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({"reference_wer": errors / words, "words": words}))


if __name__ == "__main__":
    main()
