#!/usr/bin/env python3
"""SentencePiece encoding cases for the Rust encoder (src/model/sensevoice/spm_encode.rs).

FunASR's SenseVoice timestamps re-encode the decoded text (`EncodeAsPieces(text)[4:]`, then each
piece again with `EncodeAsIds`), so the Rust port needs sentencepiece's own encoding: the
`nmt_nfkc` normaliser of the model's precompiled charsmap, user-defined symbols kept whole, BPE
merges by score, unknown runs merged. This script records what sentencepiece gives on the
committed toy model for texts that exercise each of those, plus the decoded texts of the
committed clips.

Writes tests/data/sensevoice/spm_encode.json:
  {"sentencepiece": version, "model": file name,
   "cases": [{"text", "normalized", "pieces", "ids", "piece_ids"}]}
where `piece_ids` is `EncodeAsIds(pieces)` (one list per piece), as FunASR's tokens2ids does.

Run: /work/venv-ref/bin/python tools/reference/spm_encode.py
"""

import json
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "sensevoice"
MODEL = DATA / "tiny" / "chn_jpn_yue_eng_ko_spectok.bpe.model"

TEXTS = [
    "",
    "hello world",
    "<|en|><|NEUTRAL|><|Speech|><|woitn|>hello wonderful world你好",
    "<|zh|><|HAPPY|><|Laughter|><|woitn|>다ingsish이eings都침ingseings份",
    "the things these park<|en|>meet",
    "<|en|<|zh|>>",
    "  leading and trailing  ",
    "a  b   c",
    "\u2581qu",
    "\u2581",
    "ings",
    "ingse",
    # NFKC: full-width letters and digits, ligatures, circled digits, half-width katakana,
    # compatibility ideographs, a combining accent, the ideographic space.
    "\uff48\uff45\uff4c\uff4c\uff4f \uff11\uff12\uff13",
    "\ufb01sh \ufb02ow",
    "\u2460\u2461 \u3392 \u337f",
    "\uff76\uff9e\uff77\uff9e",
    "e\u0301t\u00e9",
    "\u3000\u4f60\u597d\u3000",
    # Controls and zero-width characters the normaliser removes or maps.
    "a\u200bb\u00adc\td\ne",
    "\u2047 \u2047",
    # Characters the toy vocabulary lacks (unknown runs).
    "\u03a9\u03a9x\U0001F600 \u0416\u0416",
    "<s></s><unk>",
    "니다습니다です ます",
]


def main():
    sp = spm.SentencePieceProcessor(model_file=str(MODEL))
    texts = list(TEXTS)
    reference = json.loads((DATA / "reference.json").read_text())
    for clip in reference["clips"].values():
        ts = clip.get("timestamp", {})
        if "text" in ts:
            texts.append(ts["text"])
    cases = []
    for text in texts:
        pieces = sp.EncodeAsPieces(text)
        cases.append({
            "text": text,
            "normalized": sp.normalize(text),
            "pieces": pieces,
            "ids": sp.EncodeAsIds(text),
            "piece_ids": sp.EncodeAsIds(pieces),
        })
    out = {"sentencepiece": spm.__version__, "model": MODEL.name, "cases": cases}
    (DATA / "spm_encode.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
