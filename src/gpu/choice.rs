//! Which device transcription runs on: parsing `--device` / `SENSEVOICE_DEVICE`, the Auto rule,
//! and mapping an NVML GPU to the CUDA ordinal the engine must open. Pure functions, any thread.
//!
//! GPUs are identified by UUID everywhere, because index orders differ: NVML enumerates by PCI
//! bus, while CUDA orders "fastest first" unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`. The engine sets
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID` in its worker before CUDA starts, so a CUDA ordinal is the rank
//! of the GPU's PCI bus id among the GPUs `CUDA_VISIBLE_DEVICES` leaves visible
//! ([`cuda_ordinal`]). NVML itself ignores `CUDA_VISIBLE_DEVICES`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::GpuSnapshot;

/// The environment variable CUDA reads to hide GPUs.
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

/// The user's choice of device, as persisted in settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceChoice {
    /// The visible GPU with the most free VRAM (ties: lowest NVML index), else the CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// One GPU, by NVML UUID.
    Gpu {
        /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
        uuid: String,
    },
    /// Every visible GPU, one worker each, files spread over them; the CPU when there is none.
    All,
}

impl fmt::Display for DeviceChoice {
    /// The form `--device` accepts back: `auto`, `cpu`, `all` or the UUID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Gpu { uuid } => f.write_str(uuid),
            Self::All => f.write_str("all"),
        }
    }
}

/// A `--device` value that is not one of the valid choices.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid device \"{value}\": {reason}. Valid choices: {valid_choices}")]
pub struct DeviceChoiceError {
    /// What the user gave.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
    /// Every accepted value on this machine, comma-separated.
    pub valid_choices: String,
}

/// Where a [`DeviceChoice`] lands on this machine right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolvedDevice<'a> {
    /// Transcription runs on this GPU.
    Gpu(&'a GpuSnapshot),
    /// Transcription runs on every usable visible GPU, one worker each
    /// ([`DeviceChoice::target_gpus`] lists them).
    AllGpus {
        /// How many GPUs (at least 1).
        count: usize,
    },
    /// Transcription runs on the CPU, for this reason.
    Cpu(CpuReason),
}

/// Why a choice resolves to the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuReason {
    /// The user chose the CPU.
    Chosen,
    /// Auto or All found no usable GPU.
    NoGpu,
    /// The chosen GPU is not present (or is hidden by `CUDA_VISIBLE_DEVICES`).
    ChosenGpuMissing,
}

impl DeviceChoice {
    /// Parses `auto`, `cpu`, `all`, `cuda` (= `cuda:0`), `cuda:N` or a GPU UUID (or a unique
    /// prefix of at least `GPU-` plus 8 hex digits), case-insensitively, against the GPUs present.
    /// `all`, like `auto`, is valid without any GPU (it then runs on the CPU).
    ///
    /// `cuda:N` is the CUDA ordinal the engine will see (see [`cuda_ordinal`]); it is stored as
    /// the GPU's UUID so that it keeps meaning the same GPU.
    pub fn parse(
        value: &str,
        gpus: &[GpuSnapshot],
        cuda_visible_devices: Option<&str>,
    ) -> Result<Self, DeviceChoiceError> {
        let visible = cuda_visible_gpus(gpus, cuda_visible_devices);
        let invalid = |reason: String| DeviceChoiceError {
            value: value.to_owned(),
            reason,
            valid_choices: valid_choices(&visible),
        };
        let lower = value.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => return Ok(Self::Auto),
            "cpu" => return Ok(Self::Cpu),
            "all" => return Ok(Self::All),
            _ => {}
        }
        if let Some(rest) = lower.strip_prefix("cuda") {
            let ordinal_text = if rest.is_empty() {
                "0"
            } else if let Some(digits) = rest.strip_prefix(':') {
                digits
            } else {
                return Err(invalid("expected cuda:N, e.g. cuda:0".to_owned()));
            };
            let ordinal: usize = ordinal_text
                .parse()
                .map_err(|_| invalid(format!("\"{ordinal_text}\" is not a CUDA device number")))?;
            return match visible.get(ordinal) {
                Some(gpu) => Ok(Self::Gpu {
                    uuid: gpu.uuid.clone(),
                }),
                None if visible.is_empty() => Err(invalid("no NVIDIA GPU found".to_owned())),
                None => Err(invalid(format!(
                    "there is no CUDA device {ordinal} ({} visible)",
                    visible.len()
                ))),
            };
        }
        if lower.starts_with("gpu-") {
            return match find_by_uuid_prefix(gpus, &lower) {
                UuidMatch::One(gpu) if visible.iter().any(|v| v.uuid == gpu.uuid) => {
                    Ok(Self::Gpu {
                        uuid: gpu.uuid.clone(),
                    })
                }
                UuidMatch::One(_) => Err(invalid(format!(
                    "that GPU is hidden by {CUDA_VISIBLE_DEVICES}"
                ))),
                UuidMatch::TooShort => Err(invalid(
                    "give at least GPU- and 8 hex digits of the UUID".to_owned(),
                )),
                UuidMatch::Ambiguous => {
                    Err(invalid("that UUID prefix matches several GPUs".to_owned()))
                }
                UuidMatch::None => Err(invalid("no GPU has that UUID".to_owned())),
            };
        }
        Err(invalid("not a known device".to_owned()))
    }

    /// Where this choice lands, given the GPUs present and `CUDA_VISIBLE_DEVICES`.
    pub fn resolve<'a>(
        &self,
        gpus: &'a [GpuSnapshot],
        cuda_visible_devices: Option<&str>,
    ) -> ResolvedDevice<'a> {
        let visible = cuda_visible_gpus(gpus, cuda_visible_devices);
        match self {
            Self::Cpu => ResolvedDevice::Cpu(CpuReason::Chosen),
            Self::Auto => auto_pick(&visible)
                .map_or(ResolvedDevice::Cpu(CpuReason::NoGpu), ResolvedDevice::Gpu),
            Self::Gpu { uuid } => visible.into_iter().find(|g| g.uuid == *uuid).map_or(
                ResolvedDevice::Cpu(CpuReason::ChosenGpuMissing),
                ResolvedDevice::Gpu,
            ),
            Self::All => match usable(&visible).count() {
                0 => ResolvedDevice::Cpu(CpuReason::NoGpu),
                count => ResolvedDevice::AllGpus { count },
            },
        }
    }

    /// The GPUs transcription runs on, for marking their panels: none for the CPU, the one
    /// [`resolve`](Self::resolve) picks, or for [`All`](Self::All) every visible GPU whose memory
    /// can be read (the engine is only told about those).
    pub fn target_gpus<'a>(
        &self,
        gpus: &'a [GpuSnapshot],
        cuda_visible_devices: Option<&str>,
    ) -> Vec<&'a GpuSnapshot> {
        match self.resolve(gpus, cuda_visible_devices) {
            ResolvedDevice::Gpu(gpu) => vec![gpu],
            ResolvedDevice::Cpu(_) => Vec::new(),
            ResolvedDevice::AllGpus { .. } => {
                usable(&cuda_visible_gpus(gpus, cuda_visible_devices)).collect()
            }
        }
    }
}

/// The GPUs whose memory can be read: the ones Auto considers and the engine is given.
fn usable<'a, 'b>(gpus: &'b [&'a GpuSnapshot]) -> impl Iterator<Item = &'a GpuSnapshot> + 'b {
    gpus.iter().copied().filter(|g| g.free_bytes().is_some())
}

/// Auto's rule: the GPU with the most free VRAM; ties go to the lowest NVML index. GPUs whose
/// memory could not be read are skipped.
pub fn auto_pick<'a>(gpus: &[&'a GpuSnapshot]) -> Option<&'a GpuSnapshot> {
    gpus.iter()
        .copied()
        .filter_map(|g| g.free_bytes().map(|free| (g, free)))
        .max_by(|(a, a_free), (b, b_free)| {
            // On equal free memory the lower index must compare greater, so it wins the max.
            a_free
                .cmp(b_free)
                .then_with(|| b.nvml_index.cmp(&a.nvml_index))
        })
        .map(|(g, _)| g)
}

/// The CUDA ordinal of the GPU with `gpu_uuid` inside the engine (which runs with
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID`), or `None` when the GPU is absent or hidden.
pub fn cuda_ordinal(
    gpu_uuid: &str,
    gpus: &[GpuSnapshot],
    cuda_visible_devices: Option<&str>,
) -> Option<u32> {
    cuda_visible_gpus(gpus, cuda_visible_devices)
        .iter()
        .position(|g| g.uuid == gpu_uuid)
        .and_then(|i| u32::try_from(i).ok())
}

/// The GPUs CUDA will see, in CUDA ordinal order (PCI bus order, then `CUDA_VISIBLE_DEVICES`).
///
/// `CUDA_VISIBLE_DEVICES` holds indices (into the PCI-ordered list) and/or UUIDs or unique UUID
/// prefixes (`GPU-…`). As CUDA does, the list ends at the first entry that is invalid, out of
/// range, ambiguous or repeated (a `MIG-` entry counts as invalid here); an empty value hides
/// every GPU. `None` (unset) shows them all.
pub fn cuda_visible_gpus<'a>(
    gpus: &'a [GpuSnapshot],
    cuda_visible_devices: Option<&str>,
) -> Vec<&'a GpuSnapshot> {
    let mut by_pci: Vec<&GpuSnapshot> = gpus.iter().collect();
    by_pci.sort_by_key(|g| (pci_sort_key(&g.pci_bus_id), g.nvml_index));
    let Some(list) = cuda_visible_devices else {
        return by_pci;
    };
    let mut visible: Vec<&GpuSnapshot> = Vec::new();
    for entry in list.split(',').map(str::trim) {
        let found = if let Ok(index) = entry.parse::<usize>() {
            by_pci.get(index).copied()
        } else if entry.to_ascii_lowercase().starts_with("gpu-") {
            match find_by_uuid_prefix(gpus, &entry.to_ascii_lowercase()) {
                UuidMatch::One(gpu) => Some(gpu),
                UuidMatch::TooShort | UuidMatch::Ambiguous | UuidMatch::None => None,
            }
        } else {
            None
        };
        match found {
            Some(gpu) if !visible.iter().any(|v| v.uuid == gpu.uuid) => visible.push(gpu),
            _ => break,
        }
    }
    visible
}

/// `CUDA_VISIBLE_DEVICES` from the environment, if set.
pub fn cuda_visible_devices_from_env() -> Option<String> {
    std::env::var(CUDA_VISIBLE_DEVICES).ok()
}

/// `domain:bus:device.function` as numbers, so that `0000:3b:00.0` and `00000000:3B:00.0`
/// compare equal and hex sorts numerically. Unparseable ids sort last.
fn pci_sort_key(pci_bus_id: &str) -> (bool, [u32; 4]) {
    let parse = || -> Option<[u32; 4]> {
        let (domain, rest) = pci_bus_id.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        Some([
            u32::from_str_radix(domain, 16).ok()?,
            u32::from_str_radix(bus, 16).ok()?,
            u32::from_str_radix(device, 16).ok()?,
            u32::from_str_radix(function, 16).ok()?,
        ])
    };
    match parse() {
        Some(key) => (false, key),
        None => (true, [u32::MAX; 4]),
    }
}

enum UuidMatch<'a> {
    One(&'a GpuSnapshot),
    TooShort,
    Ambiguous,
    None,
}

/// Matches a lower-case `gpu-…` string against UUIDs: a whole UUID or a unique prefix of at
/// least 8 hex digits.
fn find_by_uuid_prefix<'a>(gpus: &'a [GpuSnapshot], lower: &str) -> UuidMatch<'a> {
    let hex_digits = lower
        .trim_start_matches("gpu-")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .count();
    if hex_digits < 8 {
        return UuidMatch::TooShort;
    }
    let mut matches = gpus
        .iter()
        .filter(|g| g.uuid.to_ascii_lowercase().starts_with(lower));
    match (matches.next(), matches.next()) {
        (Some(gpu), None) => UuidMatch::One(gpu),
        (Some(_), Some(_)) => UuidMatch::Ambiguous,
        (None, _) => UuidMatch::None,
    }
}

fn valid_choices(visible: &[&GpuSnapshot]) -> String {
    if visible.is_empty() {
        return "auto, cpu, all (no NVIDIA GPU found)".to_owned();
    }
    let mut choices = vec![
        "auto".to_owned(),
        "cpu".to_owned(),
        "all (every GPU, one worker each)".to_owned(),
    ];
    for (ordinal, gpu) in visible.iter().enumerate() {
        choices.push(format!("cuda:{ordinal} or {} ({})", gpu.uuid, gpu.name));
    }
    choices.join(", ")
}

#[cfg(test)]
#[path = "choice_tests.rs"]
mod tests;
