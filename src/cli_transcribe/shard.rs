//! Which files a shard of an array job transcribes: `--shard K/N` (0-based), or `--shard auto`
//! from the scheduler's environment; a file belongs to shard `fnv1a64(path bytes) % N`.
//!
//! The hash is FNV-1a, 64 bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3), over the
//! path's bytes exactly as they are written in the list. It is fixed on purpose (std's hasher is
//! seeded per process), so every shard of a job, and every re-run of one, agrees on the split.

use std::ffi::OsStr;

/// One shard of `count`: `index` in `0..count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: u64,
    /// How many shards the job has.
    pub count: u64,
}

impl Shard {
    /// The whole list in one process.
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// Whether `path` is this shard's.
    pub fn owns(self, path: &OsStr) -> bool {
        fnv1a64(path.as_encoded_bytes()) % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn number(value: &str, what: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{what} is {value:?}, not a whole number ≥ 0"))
}

fn checked(index: u64, count: u64, source: &str) -> Result<Shard, String> {
    if count == 0 {
        return Err(format!("{source}: the shard count must be at least 1"));
    }
    if index >= count {
        return Err(format!(
            "{source}: shard {index} does not exist among {count} (shards are numbered 0 to {})",
            count - 1
        ));
    }
    Ok(Shard { index, count })
}

/// Parses `--shard`: `K/N`, or `auto` resolved through `env` (see [`from_env`]).
/// `count` is `--shard-count`, for `JOB_COMPLETION_INDEX`.
pub fn parse(
    value: &str,
    count: Option<u64>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Shard, String> {
    if value.trim().eq_ignore_ascii_case("auto") {
        return from_env(count, env);
    }
    let Some((k, n)) = value.split_once('/') else {
        return Err(format!(
            "--shard {value:?}: expected K/N (e.g. 0/4, numbered from 0) or auto"
        ));
    };
    checked(
        number(k, "the shard index")?,
        number(n, "the shard count")?,
        &format!("--shard {value}"),
    )
}

/// `--shard auto`: a Slurm array task (`SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN`, over
/// `SLURM_ARRAY_TASK_STEP`, of `SLURM_ARRAY_TASK_COUNT`), else a Kubernetes Indexed Job
/// (`JOB_COMPLETION_INDEX`, of `count` or `GPUSCRIBE_SHARD_COUNT`).
pub fn from_env(count: Option<u64>, env: &dyn Fn(&str) -> Option<String>) -> Result<Shard, String> {
    if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
        let id = number(&id, "SLURM_ARRAY_TASK_ID")?;
        let min =
            env("SLURM_ARRAY_TASK_MIN").map_or(Ok(0), |v| number(&v, "SLURM_ARRAY_TASK_MIN"))?;
        let step = env("SLURM_ARRAY_TASK_STEP")
            .map_or(Ok(1), |v| number(&v, "SLURM_ARRAY_TASK_STEP"))?
            .max(1);
        let total = match count {
            Some(n) => n,
            None => number(
                &env("SLURM_ARRAY_TASK_COUNT").ok_or(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (give --shard-count)",
                )?,
                "SLURM_ARRAY_TASK_COUNT",
            )?,
        };
        let offset = id.checked_sub(min).ok_or_else(|| {
            format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")
        })?;
        if offset % step != 0 {
            return Err(format!(
                "SLURM_ARRAY_TASK_ID {id} is not MIN {min} plus a multiple of STEP {step}: \
                 use an evenly spaced --array range, or --shard K/N"
            ));
        }
        return checked(
            offset / step,
            total,
            &format!("Slurm array task {id} (min {min}, step {step}, count {total})"),
        );
    }
    if let Some(index) = env("JOB_COMPLETION_INDEX") {
        let index = number(&index, "JOB_COMPLETION_INDEX")?;
        let total = match count {
            Some(n) => n,
            None => number(
                &env("GPUSCRIBE_SHARD_COUNT").ok_or(
                    "JOB_COMPLETION_INDEX is set but the shard count is not: give --shard-count N \
                     or GPUSCRIBE_SHARD_COUNT (the Job's completions)",
                )?,
                "GPUSCRIBE_SHARD_COUNT",
            )?,
        };
        return checked(index, total, &format!("JOB_COMPLETION_INDEX {index}"));
    }
    Err(
        "--shard auto: neither SLURM_ARRAY_TASK_ID (a Slurm array job) nor \
         JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) is set; use --shard K/N"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn explicit_shards_parse_and_bad_ones_are_refused() {
        let none = env_of(&[]);
        assert_eq!(parse("2/4", None, &none), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(parse(" 0 / 1 ", None, &none), Ok(Shard::ALL));
        for bad in ["4/4", "1/0", "a/4", "-1/4", "3", ""] {
            assert!(parse(bad, None, &none).is_err(), "{bad}");
        }
        let err = parse("auto", None, &none).expect_err("no scheduler");
        assert!(err.contains("SLURM_ARRAY_TASK_ID"), "{err}");
    }

    #[test]
    fn slurm_arrays_map_to_0_based_shards_whatever_their_first_id() {
        let env = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(parse("auto", None, &env), Ok(Shard { index: 2, count: 4 }));
        // --array=1-9:2 → ids 1,3,5,7,9 → shards 0..5.
        let env = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "5"),
        ]);
        assert_eq!(parse("AUTO", None, &env), Ok(Shard { index: 4, count: 5 }));
        let env = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "5"),
        ]);
        assert!(parse("auto", None, &env).is_err());
        let env = env_of(&[("SLURM_ARRAY_TASK_ID", "3")]);
        assert!(parse("auto", None, &env).is_err());
        assert_eq!(
            parse("auto", Some(8), &env),
            Ok(Shard { index: 3, count: 8 })
        );
    }

    #[test]
    fn kubernetes_indexed_jobs_need_a_count() {
        let env = env_of(&[("JOB_COMPLETION_INDEX", "1")]);
        let err = parse("auto", None, &env).expect_err("no count");
        assert!(err.contains("--shard-count"), "{err}");
        assert_eq!(
            parse("auto", Some(3), &env),
            Ok(Shard { index: 1, count: 3 })
        );
        let env = env_of(&[
            ("JOB_COMPLETION_INDEX", "3"),
            ("GPUSCRIBE_SHARD_COUNT", "3"),
        ]);
        assert!(parse("auto", None, &env).is_err(), "index past the count");
    }

    #[test]
    fn every_path_has_exactly_one_shard_and_the_split_is_even_enough() {
        let paths: Vec<String> = (0..4000).map(|i| format!("/data/a{i}/clip.wav")).collect();
        let mut per_shard = [0usize; 4];
        for path in &paths {
            let owners: Vec<u64> = (0..4)
                .filter(|&k| Shard { index: k, count: 4 }.owns(OsStr::new(path)))
                .collect();
            assert_eq!(owners.len(), 1, "{path}");
            per_shard[owners[0] as usize] += 1;
        }
        for n in per_shard {
            assert!((800..1200).contains(&n), "{per_shard:?}");
        }
    }
}
