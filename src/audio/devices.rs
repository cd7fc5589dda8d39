//! The input-device list for the device picker (default device first, refreshable).
//!
//! Scanning talks to the sound system; call it from a worker thread or on user request.

use cpal::traits::{DeviceTrait, HostTrait};

/// One input device as shown in the device picker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputDevice {
    /// Stable id to pass to [`Recorder::start`], e.g. `alsa:default` or `pulseaudio:vmic.monitor`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// True for the host's default input device.
    pub is_default: bool,
}

/// The input devices of the default audio host, the default one first.
///
/// Scanning talks to the sound system and can take a few hundred milliseconds: call
/// [`DeviceList::scan`] / [`DeviceList::refresh`] off the UI thread or only on user request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceList {
    devices: Vec<InputDevice>,
}

impl DeviceList {
    /// Lists the input devices now. An empty list is not an error (no microphone).
    pub fn scan() -> Self {
        let host = cpal::default_host();
        let default_id = host
            .default_input_device()
            .and_then(|d| d.id().ok())
            .map(|id| id.to_string());
        let mut devices: Vec<InputDevice> = host
            .input_devices()
            .map(|iter| {
                iter.filter_map(|device| {
                    let id = device.id().ok()?.to_string();
                    let name = device
                        .description()
                        .map_or_else(|_| id.clone(), |d| d.name().to_owned());
                    let is_default = default_id.as_deref() == Some(id.as_str());
                    Some(InputDevice {
                        id,
                        name,
                        is_default,
                    })
                })
                .collect()
            })
            .unwrap_or_default();
        if let Some(default_id) = &default_id
            && !devices.iter().any(|d| &d.id == default_id)
        {
            devices.push(InputDevice {
                id: default_id.clone(),
                name: "Default input".into(),
                is_default: true,
            });
        }
        // Default first, the rest in the host's order.
        devices.sort_by_key(|d| !d.is_default);
        Self { devices }
    }

    /// Scans again, replacing the list.
    pub fn refresh(&mut self) {
        *self = Self::scan();
    }

    /// The devices, default first.
    pub fn devices(&self) -> &[InputDevice] {
        &self.devices
    }

    /// The default device, if the host has one.
    pub fn default_device(&self) -> Option<&InputDevice> {
        self.devices.iter().find(|d| d.is_default)
    }
}
