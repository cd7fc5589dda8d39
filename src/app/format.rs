//! Number formatting for the GPU panels: units in the text, "n/a" for unknown values.

use std::time::Duration;

const GIB: f64 = (1u64 << 30) as f64;
const MIB: u64 = 1 << 20;

/// Shown for a value the GPU does not report.
pub const NOT_AVAILABLE: &str = "n/a";

/// Bytes as GiB with one decimal, e.g. `79.6`.
pub fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes_to_gib(bytes))
}

/// Bytes as a float number of GiB (for plots).
// VRAM sizes are far below 2^52 bytes, so the conversion is exact enough.
pub fn bytes_to_gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

/// Bytes as whole MiB, e.g. `1450 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / MIB)
}

/// `value unit`, or "n/a".
pub fn with_unit(value: Option<u32>, unit: &str) -> String {
    value.map_or_else(|| NOT_AVAILABLE.to_owned(), |v| format!("{v} {unit}"))
}

/// Milliwatts as watts, `draw / limit W`, with "n/a" for either part.
pub fn power(draw_mw: Option<u32>, limit_mw: Option<u32>) -> String {
    let watts =
        |mw: Option<u32>| mw.map_or_else(|| NOT_AVAILABLE.to_owned(), |v| (v / 1000).to_string());
    match (draw_mw, limit_mw) {
        (None, None) => NOT_AVAILABLE.to_owned(),
        _ => format!("{} / {} W", watts(draw_mw), watts(limit_mw)),
    }
}

/// A short age such as `12 s` or `3 min`.
pub fn age(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 120 {
        format!("{secs} s")
    } else {
        format!("{} min", secs / 60)
    }
}

/// The file name of a process path (`/usr/bin/python3` → `python3`).
pub fn process_display_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_units_and_unknowns() {
        assert_eq!(gib(85_520_809_984), "79.6");
        assert_eq!(mib(1_450 * MIB + 5), "1450 MiB");
        assert_eq!(with_unit(Some(38), "°C"), "38 °C");
        assert_eq!(with_unit(None, "%"), "n/a");
        assert_eq!(power(Some(122_875), Some(700_000)), "122 / 700 W");
        assert_eq!(power(Some(122_875), None), "122 / n/a W");
        assert_eq!(power(None, None), "n/a");
        assert_eq!(age(Duration::from_secs(12)), "12 s");
        assert_eq!(age(Duration::from_secs(600)), "10 min");
        assert_eq!(process_display_name("/usr/bin/python3"), "python3");
        assert_eq!(process_display_name("转写服务"), "转写服务");
    }
}
