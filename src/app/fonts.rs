//! CJK text: a bundled Noto Sans CJK SC subset, installed once on the UI thread at start-up.
//!
//! egui's default fonts have no Chinese, Japanese or Korean glyphs. The subset
//! (`assets/fonts/NotoSansCJKsc-Subset.otf`, about 14,000 characters: GB 2312, Big5 level 1,
//! JIS X 0208, KS X 1001 Hangul, kana, CJK punctuation; see `make_subset.py`) renders the
//! same everywhere and makes UI tests deterministic. It is added at the lowest priority, so
//! Latin text keeps egui's font; characters outside the subset still fall back to system fonts
//! through eframe's `system_fonts` provider. License: SIL OFL 1.1 (`assets/fonts/OFL.txt`).

use eframe::egui;
use egui::epaint::text::{FontInsert, FontPriority, InsertFontFamily};

/// The subset font file, compiled in.
pub const CJK_FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/NotoSansCJKsc-Subset.otf");

/// The name the font is registered under.
pub const CJK_FONT_NAME: &str = "noto_sans_cjk_sc_subset";

/// Adds the bundled CJK font as the last fallback of both font families.
pub fn install_cjk_font(ctx: &egui::Context) {
    ctx.add_font(FontInsert::new(
        CJK_FONT_NAME,
        egui::FontData::from_static(CJK_FONT_BYTES),
        vec![
            InsertFontFamily {
                family: egui::FontFamily::Proportional,
                priority: FontPriority::Lowest,
            },
            InsertFontFamily {
                family: egui::FontFamily::Monospace,
                priority: FontPriority::Lowest,
            },
        ],
    ));
}
