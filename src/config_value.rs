//! What every config section's check shares: the error naming the key ([`ConfigValueError`]),
//! the range check ([`in_range`]) and the ceilings of durations, counts and sizes. A base
//! module: the sections' types live in the layers that use them, and all import this.

use std::ops::RangeInclusive;

/// A section's value that fails its check: the full dotted key and what is wrong, including
/// the allowed range or values. `Config::validate` adds where the value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}`: {message}")]
pub struct ConfigValueError {
    /// The full dotted key, e.g. `market.bid_window_ms`.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigValueError {
    /// The error of `key`.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// Checks that `key`'s `value` lies in `range`; the error gives the value and the range,
/// e.g. "0 is out of range: use a value from 1 to 60000".
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigValueError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(ConfigValueError::new(
        key,
        format!(
            "{value} is out of range: use a value from {} to {}",
            range.start(),
            range.end()
        ),
    ))
}

/// Ceiling of durations in milliseconds: a day, far beyond any sensible value. Every number
/// has a floor and a ceiling, so no setting can overflow the arithmetic that uses it.
pub const DAY_MS: u64 = 24 * 3600 * 1000;
/// Ceiling of durations in seconds: a day.
pub const DAY_SECS: u64 = 24 * 3600;
/// Ceiling of counts (connections, peers): 2^20.
pub const MANY: u32 = 1 << 20;
/// Ceiling of byte sizes held in memory at once: 1 GiB.
pub const GIB: u64 = 1 << 30;

/// An optional socket address as a string, empty for none (so that the key has a value in
/// `config/default.toml` and an environment variable).
pub mod optional_socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// `None` as `""`, an address as `ip:port`.
    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    /// `""` as `None`, else an `ip:port`; the error shows the value and an example.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.trim().parse().map(Some).map_err(|_| {
            D::Error::custom(format!(
                "`{s}` is not an address and port, e.g. 0.0.0.0:9465 (or empty for none)"
            ))
        })
    }
}
