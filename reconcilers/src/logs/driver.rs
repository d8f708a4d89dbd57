//! What the `converge log-driver` binary logger is told: where to write and how to rotate,
//! carried through containerd as one `binary://` URI query pair.
//!
//! containerd's shim turns the URI's query into `key value` arguments in map order, so
//! converge passes exactly one pair, `log-driver=<config>`: the shim then runs
//! `converge log-driver <config>` (the pattern nerdctl uses), where `<config>` is itself a
//! form-encoded query (`dir=...&name=...&max-size=...&max-files=...&max-line=...`).

use std::path::{Path, PathBuf};

use reqwest::Url;

use super::format::MAX_LINE_BYTES;
use super::writer::RotationPolicy;
use crate::containerd::{ContainerdError, TaskIo};

/// The subcommand (and URI query key) that runs the log driver.
pub const DRIVER_SUBCOMMAND: &str = "log-driver";

/// Why a driver configuration string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverConfigError {
    /// A key converge does not know.
    #[error("unknown log-driver key {0:?}")]
    UnknownKey(String),
    /// A number that is not a positive integer.
    #[error("log-driver {key} must be a positive integer, got {value:?}")]
    Number {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
    },
    /// `dir` missing or relative.
    #[error("log-driver dir must be an absolute path, got {0:?}")]
    Dir(String),
    /// No usable file name.
    #[error("log-driver name must be a plain file name, got {0:?}")]
    Name(String),
}

/// Where and how the driver writes one container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// The sandbox's log directory (absolute).
    pub dir: PathBuf,
    /// The file stem: the log is `<dir>/<name>.log`.
    pub name: String,
    /// Rotation.
    pub policy: RotationPolicy,
    /// Longest record text; longer lines become `P` records.
    pub max_line: usize,
}

impl DriverConfig {
    /// `<dir>/<name>.log` with default rotation (10 MiB, 3 files) and 16 KiB lines.
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> DriverConfig {
        DriverConfig {
            dir: dir.into(),
            name: name.into(),
            policy: RotationPolicy::default(),
            max_line: MAX_LINE_BYTES,
        }
    }

    /// The log file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// The configuration as the form-encoded string `from_query` reads.
    pub fn to_query(&self) -> String {
        // Parsing a constant cannot fail; were it to, the empty string is refused by
        // `from_query`, so the driver would report it rather than write somewhere odd.
        let Ok(mut url) = Url::parse("converge:log-driver") else {
            return String::new();
        };
        url.query_pairs_mut()
            .append_pair("dir", &self.dir.to_string_lossy())
            .append_pair("name", &self.name)
            .append_pair("max-size", &self.policy.max_size.to_string())
            .append_pair("max-files", &self.policy.max_files.to_string())
            .append_pair("max-line", &self.max_line.to_string());
        url.query().unwrap_or_default().to_string()
    }

    /// Parses a `to_query` string. `name` defaults to `container_id` (the shim's
    /// `$CONTAINER_ID`), the rest to [`DriverConfig::new`]'s defaults. Fails, naming the
    /// problem, on an unknown key, a non-positive number, a missing or relative `dir`, or
    /// a name that is not a plain file name.
    pub fn from_query(
        query: &str,
        container_id: Option<&str>,
    ) -> Result<DriverConfig, DriverConfigError> {
        let url = Url::parse(&format!("converge:log-driver?{query}"))
            .map_err(|_| DriverConfigError::Dir(query.to_string()))?;
        let mut dir = None;
        let mut config = DriverConfig::new("", container_id.unwrap_or_default());
        for (key, value) in url.query_pairs() {
            let number = || {
                value.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    DriverConfigError::Number {
                        key: key.to_string(),
                        value: value.to_string(),
                    }
                })
            };
            let too_big = || DriverConfigError::Number {
                key: key.to_string(),
                value: value.to_string(),
            };
            match key.as_ref() {
                "dir" => dir = Some(PathBuf::from(value.as_ref())),
                "name" => config.name = value.to_string(),
                "max-size" => config.policy.max_size = number()?,
                "max-files" => {
                    config.policy.max_files = u32::try_from(number()?).map_err(|_| too_big())?
                }
                "max-line" => {
                    config.max_line = usize::try_from(number()?).map_err(|_| too_big())?
                }
                other => return Err(DriverConfigError::UnknownKey(other.to_string())),
            }
        }
        config.dir = dir
            .filter(|d| d.is_absolute())
            .ok_or_else(|| DriverConfigError::Dir(query.to_string()))?;
        let name = &config.name;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(DriverConfigError::Name(name.clone()));
        }
        Ok(config)
    }

    /// Task stdio that runs `program` (the `converge` binary, absolute) as this log's
    /// driver: `binary://<program>?log-driver=<to_query()>`. Fails when `program` is not an
    /// absolute UTF-8 path.
    pub fn task_io(&self, program: &Path) -> Result<TaskIo, ContainerdError> {
        TaskIo::binary_logger(program, &[(DRIVER_SUBCOMMAND, &self.to_query())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_survives_the_query_round_trip_even_with_odd_characters() {
        let mut c = DriverConfig::new("/var/lib/con verge/logs/w&b=1", "app");
        c.policy = RotationPolicy {
            max_size: 4096,
            max_files: 5,
        };
        c.max_line = 100;
        assert_eq!(
            DriverConfig::from_query(&c.to_query(), None).expect("parse"),
            c
        );
    }

    #[test]
    fn the_name_defaults_to_the_container_id_and_the_rest_to_defaults() {
        let c = DriverConfig::from_query("dir=%2Fl%2Fs", Some("cid")).expect("parse");
        assert_eq!(c, DriverConfig::new("/l/s", "cid"));
        assert_eq!(c.path(), PathBuf::from("/l/s/cid.log"));
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        for (q, want) in [
            ("dir=rel", "absolute"),
            ("name=x", "absolute"),
            ("dir=/x&colour=red", "unknown"),
            ("dir=/x&max-size=0", "positive"),
            ("dir=/x&max-files=ten", "positive"),
            ("dir=/x&name=..%2Fup", "plain file name"),
            ("dir=/x", "plain file name"),
        ] {
            let err = DriverConfig::from_query(q, None).expect_err(q).to_string();
            assert!(err.contains(want), "{q}: {err}");
        }
    }

    #[test]
    fn task_io_points_both_streams_at_the_driver_uri() {
        let io = DriverConfig::new("/l/s", "app")
            .task_io(Path::new("/usr/bin/converge"))
            .expect("io");
        let uri = io.stdout.to_str().expect("utf8").to_string();
        assert!(
            uri.starts_with("binary:///usr/bin/converge?log-driver="),
            "{uri}"
        );
        assert_eq!(io.stdout, io.stderr);
        assert!(
            DriverConfig::new("/l/s", "app")
                .task_io(Path::new("converge"))
                .is_err()
        );
    }
}
