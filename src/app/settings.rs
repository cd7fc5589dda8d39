//! Persisted user settings (eframe storage). Read on the UI thread at start-up, saved by `save()`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{DecodeSettings, ResidencyConfig, SpeechEngine};
use crate::gpu::{DEFAULT_SAMPLE_INTERVAL, DeviceChoice, clamp_sample_interval};

/// Everything the app remembers between runs. `#[serde(default)]` so that settings saved by an
/// older version (missing fields) still load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where transcription runs.
    pub device: DeviceChoice,
    /// How much history the GPU plots show.
    pub plot_window: PlotWindow,
    /// Time between GPU samples, clamped to 100 ms – 5 s when used.
    pub sample_interval_ms: u64,
    /// Language, ITN and emoji options sent with every new job.
    pub decode: DecodeSettings,
    /// When the model leaves VRAM, and when its worker exits.
    pub residency: ResidencyConfig,
    /// A local model folder (SenseVoice, or Whisper for the Whisper engine); `None` downloads
    /// the SenseVoice release model on first use.
    pub model_dir: Option<PathBuf>,
    /// The speech model: SenseVoice-Small or a Whisper size.
    pub engine: SpeechEngine,
    /// The microphone's id (`alsa:default`, …); `None` uses the default input.
    pub input_device: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            plot_window: PlotWindow::default(),
            sample_interval_ms: u64::try_from(DEFAULT_SAMPLE_INTERVAL.as_millis()).unwrap_or(500),
            decode: DecodeSettings::default(),
            residency: ResidencyConfig::default(),
            model_dir: None,
            engine: SpeechEngine::SenseVoice,
            input_device: None,
        }
    }
}

impl Settings {
    /// The sampling interval, clamped to what the monitor allows.
    pub fn sample_interval(&self) -> Duration {
        clamp_sample_interval(Duration::from_millis(self.sample_interval_ms))
    }
}

/// The time span of the GPU plots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlotWindow {
    /// The last minute.
    OneMinute,
    /// The last 5 minutes.
    #[default]
    FiveMinutes,
    /// The last 10 minutes.
    TenMinutes,
}

impl PlotWindow {
    /// Every choice, shortest first.
    pub const ALL: [Self; 3] = [Self::OneMinute, Self::FiveMinutes, Self::TenMinutes];

    /// The span.
    pub fn duration(self) -> Duration {
        match self {
            Self::OneMinute => Duration::from_secs(60),
            Self::FiveMinutes => Duration::from_secs(5 * 60),
            Self::TenMinutes => Duration::from_secs(10 * 60),
        }
    }

    /// The button text.
    pub fn label(self) -> &'static str {
        match self {
            Self::OneMinute => "1 min",
            Self::FiveMinutes => "5 min",
            Self::TenMinutes => "10 min",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_defaults() {
        let settings: Settings =
            serde_json::from_str(r#"{"plot_window":"OneMinute"}"#).expect("old settings load");
        assert_eq!(settings.plot_window, PlotWindow::OneMinute);
        assert_eq!(settings.device, DeviceChoice::Auto);
        assert_eq!(settings.sample_interval(), DEFAULT_SAMPLE_INTERVAL);
    }

    #[test]
    fn all_gpus_choice_loads() {
        let settings: Settings =
            serde_json::from_str(r#"{"device":{"kind":"all"}}"#).expect("settings load");
        assert_eq!(settings.device, DeviceChoice::All);
        let saved = serde_json::to_string(&settings).expect("serialise");
        let back: Settings = serde_json::from_str(&saved).expect("deserialise");
        assert_eq!(back, settings);
    }

    #[test]
    fn interval_is_clamped_on_use() {
        let settings = Settings {
            sample_interval_ms: 1,
            ..Settings::default()
        };
        assert_eq!(settings.sample_interval(), Duration::from_millis(100));
    }

    #[test]
    fn widest_plot_window_fits_the_history() {
        let widest = PlotWindow::ALL.iter().map(|w| w.duration()).max();
        assert_eq!(widest, Some(crate::gpu::MAX_PLOT_WINDOW));
    }
}
