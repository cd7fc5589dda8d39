//! The input-device list for the device picker: the default device first, then the other
//! microphones, then *monitor* sources (what the computer plays, where the sound server offers
//! them: PulseAudio's `….monitor` sources, PipeWire's sinks opened for capture), so a call or a
//! video can be captioned. Refreshable.
//!
//! Scanning talks to the sound system; call it from a worker thread or on user request. Which
//! hosts there are depends on the build: cpal's default Linux build has ALSA only, whose device
//! list has no monitor sources (ALSA's `pulse` device records PulseAudio's default source);
//! cpal's `pulseaudio` / `pipewire` features add those hosts and their monitors.

use cpal::traits::{DeviceTrait, HostTrait};

/// What a monitor source's label adds to its name.
pub const MONITOR_NOTE: &str = "system sound";

/// One input device as shown in the device picker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputDevice {
    /// Stable id to pass to [`Recorder::start`](super::Recorder::start), e.g. `alsa:default` or
    /// `pulseaudio:vmic.monitor`.
    pub id: String,
    /// Human-readable name, as the host gives it.
    pub name: String,
    /// True for the host's default input device.
    pub is_default: bool,
    /// True for a monitor source: it records what the computer plays, not a microphone.
    pub is_monitor: bool,
}

impl InputDevice {
    /// The picker's text: the name, and for a monitor source that it is one
    /// (`Monitor of Built-in Audio · system sound`).
    pub fn label(&self) -> String {
        if !self.is_monitor {
            return self.name.clone();
        }
        if self.name.starts_with("Monitor of ") {
            format!("{} · {MONITOR_NOTE}", self.name)
        } else {
            format!("Monitor of {} · {MONITOR_NOTE}", self.name)
        }
    }
}

/// A device as a host lists it, before it is sorted and labelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// `host:device`, as cpal prints a [`cpal::DeviceId`].
    pub id: String,
    /// The host's name for it.
    pub name: String,
    /// The host says it is its default input.
    pub is_default: bool,
    /// It also plays (cpal lists PipeWire's sinks as input-and-output devices, whose input is
    /// what plays to them).
    pub is_output_too: bool,
}

/// Whether a listed device is a monitor source: a PulseAudio (or PipeWire-as-PulseAudio)
/// source named `….monitor` or described as `Monitor of …`, or a PipeWire sink opened for
/// capture.
pub fn is_monitor_source(device: &HostDevice) -> bool {
    let (host, name) = device
        .id
        .split_once(':')
        .unwrap_or(("", device.id.as_str()));
    name.ends_with(".monitor")
        || device.name.starts_with("Monitor of ")
        || (host == "pipewire" && device.is_output_too)
}

/// The input devices of every audio host, the default one first, monitors last.
///
/// Scanning talks to the sound system and can take a few hundred milliseconds: call
/// [`DeviceList::scan`] / [`DeviceList::refresh`] off the UI thread or only on user request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceList {
    devices: Vec<InputDevice>,
}

impl DeviceList {
    /// Lists the input devices now: the default host's, then those of the build's other hosts.
    /// An empty list is not an error (no microphone).
    pub fn scan() -> Self {
        let default_host = cpal::default_host();
        let default_id = default_host
            .default_input_device()
            .and_then(|d| d.id().ok())
            .map(|id| id.to_string());
        let mut listed = host_inputs(&default_host);
        for host_id in cpal::available_hosts() {
            if host_id == default_host.id() {
                continue;
            }
            if let Ok(host) = cpal::host_from_id(host_id) {
                listed.extend(host_inputs(&host));
            }
        }
        for device in &mut listed {
            device.is_default = default_id.as_deref() == Some(device.id.as_str());
        }
        if let Some(default_id) = &default_id
            && !listed.iter().any(|d| &d.id == default_id)
        {
            listed.push(HostDevice {
                id: default_id.clone(),
                name: "Default input".into(),
                is_default: true,
                is_output_too: false,
            });
        }
        Self::from_host_devices(listed)
    }

    /// The list for devices as hosts listed them: repeats (one id twice) dropped, the default
    /// first, then microphones, then monitor sources, each in the hosts' order.
    pub fn from_host_devices(listed: Vec<HostDevice>) -> Self {
        let mut devices: Vec<InputDevice> = Vec::with_capacity(listed.len());
        for device in listed {
            if devices.iter().any(|d| d.id == device.id) {
                continue;
            }
            devices.push(InputDevice {
                is_monitor: is_monitor_source(&device),
                id: device.id,
                name: device.name,
                is_default: device.is_default,
            });
        }
        devices.sort_by_key(|d| (!d.is_default, d.is_monitor));
        Self { devices }
    }

    /// Scans again, replacing the list.
    pub fn refresh(&mut self) {
        *self = Self::scan();
    }

    /// The devices, default first, monitors last.
    pub fn devices(&self) -> &[InputDevice] {
        &self.devices
    }

    /// The default device, if the host has one.
    pub fn default_device(&self) -> Option<&InputDevice> {
        self.devices.iter().find(|d| d.is_default)
    }
}

/// One host's input devices.
fn host_inputs(host: &cpal::Host) -> Vec<HostDevice> {
    host.input_devices()
        .map(|iter| {
            iter.filter_map(|device| {
                let id = device.id().ok()?.to_string();
                let description = device.description().ok();
                let name = description
                    .as_ref()
                    .map_or_else(|| id.clone(), |d| d.name().to_owned());
                let is_output_too = description.is_some_and(|d| d.supports_output());
                Some(HostDevice {
                    id,
                    name,
                    is_default: false,
                    is_output_too,
                })
            })
            .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, name: &str, is_output_too: bool) -> HostDevice {
        HostDevice {
            id: id.into(),
            name: name.into(),
            is_default: false,
            is_output_too,
        }
    }

    #[test]
    fn monitor_sources_are_found_labelled_and_listed_after_the_microphones() {
        let mut default = listed(
            "pulseaudio:alsa_input.pci.analog-stereo",
            "Built-in Mic",
            false,
        );
        default.is_default = true;
        let list = DeviceList::from_host_devices(vec![
            listed(
                "pulseaudio:alsa_output.pci.analog-stereo.monitor",
                "Monitor of Built-in Audio Analog Stereo",
                false,
            ),
            listed("alsa:default", "Default Audio Device", true),
            listed("pulseaudio:vmic.monitor", "vmic", false),
            default,
            listed("pipewire:alsa_output.usb-headset", "USB Headset", true),
            listed("pipewire:alsa_input.usb-headset", "USB Headset Mic", false),
            // The same device twice (two hosts' views of one id) is listed once.
            listed("alsa:default", "Default Audio Device", true),
        ]);
        let shown: Vec<(String, String)> = list
            .devices()
            .iter()
            .map(|d| (d.id.clone(), d.label()))
            .collect();
        let expected = [
            (
                "pulseaudio:alsa_input.pci.analog-stereo",
                "Built-in Mic".to_owned(),
            ),
            ("alsa:default", "Default Audio Device".to_owned()),
            (
                "pipewire:alsa_input.usb-headset",
                "USB Headset Mic".to_owned(),
            ),
            (
                "pulseaudio:alsa_output.pci.analog-stereo.monitor",
                format!("Monitor of Built-in Audio Analog Stereo · {MONITOR_NOTE}"),
            ),
            (
                "pulseaudio:vmic.monitor",
                format!("Monitor of vmic · {MONITOR_NOTE}"),
            ),
            (
                "pipewire:alsa_output.usb-headset",
                format!("Monitor of USB Headset · {MONITOR_NOTE}"),
            ),
        ];
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(id, label)| (id.to_owned(), label))
            .collect();
        assert_eq!(shown, expected);
        assert_eq!(
            list.default_device().map(|d| d.id.as_str()),
            Some("pulseaudio:alsa_input.pci.analog-stereo")
        );
        // ALSA's duplex "default" plays too, and is no monitor: only PipeWire lists sinks so.
        assert!(!list.devices()[1].is_monitor);
    }
}
