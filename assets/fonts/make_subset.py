#!/usr/bin/env python3
"""Regenerates assets/fonts/NotoSansCJKsc-Subset.otf, the CJK font compiled into GPU Scribe.

Why a subset: egui's default fonts have no CJK glyphs, and the full NotoSansCJK-Regular.ttc is
19.5 MB. SenseVoice transcribes Mandarin, Cantonese, Japanese and Korean, so every label and
transcript must render those scripts on machines without CJK fonts and in deterministic tests.
Rare characters outside this subset fall back to system fonts (eframe's `system_fonts`).

Usage (Debian: apt-get install fonts-noto-cjk; pip install fonttools==4.60.1):
    python3 assets/fonts/make_subset.py [/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc]

Face 2 of the collection is "Noto Sans CJK SC" (0=JP, 1=KR, 2=SC, 3=TC, 4=HK).
"""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = pathlib.Path(
    sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
)
FACE_SC = 2
OUT = HERE / "NotoSansCJKsc-Subset.otf"
CHARS = HERE / "subset-chars.txt"


def decode_table(codec: str, lead: range, trail: range) -> set[str]:
    """Every character of a double-byte legacy charset, decoded through Python's codec."""
    chars = set()
    for hi in lead:
        for lo in trail:
            try:
                chars.add(bytes([hi, lo]).decode(codec))
            except UnicodeDecodeError:
                pass
    return chars


def wanted_chars() -> set[str]:
    chars = set(chr(c) for c in range(0x20, 0x7F))  # ASCII
    chars |= set(chr(c) for c in range(0x3000, 0x3040))  # CJK symbols and punctuation
    chars |= set(chr(c) for c in range(0x3040, 0x3100))  # hiragana + katakana
    chars |= set(chr(c) for c in range(0xFF00, 0xFFF0))  # half/fullwidth forms
    chars |= set(chr(c) for c in range(0x3130, 0x3190))  # Hangul compatibility jamo
    # Mandarin (simplified): GB 2312, 6,763 hanzi plus symbols.
    chars |= decode_table("gb2312", range(0xA1, 0xF8), range(0xA1, 0xFF))
    # Japanese: JIS X 0208 (kanji, kana, symbols).
    chars |= decode_table("euc_jp", range(0xA1, 0xF5), range(0xA1, 0xFF))
    # Korean: KS X 1001 (2,350 precomposed Hangul syllables; rows 0xB0-0xC8), no hanja.
    chars |= decode_table("euc_kr", range(0xA1, 0xC9), range(0xA1, 0xFF))
    # Cantonese / traditional: Big5 level 1 (5,401 frequent hanzi, lead bytes 0xA4-0xC6).
    chars |= decode_table("big5", range(0xA1, 0xC7), range(0x40, 0xFF))
    # Cantonese-specific characters that SenseVoice emits for yue and are missing from the above.
    chars |= set("嘅咗唔係佢啲喺嚟咁冇睇嘢乜嗰啱諗揾搵攞俾畀咪噉哋嚿咩喎啫囉吖嘞")
    # Symbols the UI itself draws (warning sign, badges, arrows).
    chars |= set("⚠✓▶●→·—…°µ")
    return {c for c in chars if c.isprintable() or c == " "}


def main() -> None:
    chars = wanted_chars()
    CHARS.write_text("".join(sorted(chars)), encoding="utf-8")
    subprocess.run(
        [
            "pyftsubset",
            str(SOURCE),
            f"--font-number={FACE_SC}",
            f"--text-file={CHARS}",
            "--layout-features=*",
            "--no-hinting",
            f"--output-file={OUT}",
        ],
        check=True,
    )
    CHARS.unlink()
    print(f"{OUT.name}: {len(chars)} characters, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
