//! Node configuration: defaults, the TOML file, `ZEROSTATE_*` environment variables and
//! command-line flags, merged with the precedence flag > env > file > default.
//!
//! Every key of [`Config`] can be set in the file (`config/default.toml` lists them all), and
//! through an environment variable named `ZEROSTATE_` + the key path in upper case with `.`
//! replaced by `_` (e.g. `api.max_connections` -> `ZEROSTATE_API_MAX_CONNECTIONS`). List keys
//! take a comma-separated value in the environment.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

use crate::p2p::announce::MetricsUrl;

pub use crate::content::{CacheConfig, ContentConfig, VerifyOnRead};
pub use crate::http::ApiConfig;
pub use crate::market::{MarketConfig, ProviderConfig, ReputationConfig};
pub use crate::metrics::MetricsConfig;
pub use crate::p2p::{DiscoveryConfig, LimitsConfig, MonitorConfig, P2pConfig};
pub use crate::payments::PaymentsConfig;

/// Logging (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `zerostate=debug,libp2p=info`. The
    /// `RUST_LOG` environment variable, when set, replaces it.
    pub filter: String,
    /// `text`: human-readable lines; `json`: one JSON object per line.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Prefix of every environment variable that sets a config key.
pub const ENV_PREFIX: &str = "ZEROSTATE_";

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Multiaddrs the swarm listens on (TCP and QUIC).
    #[serde(with = "multiaddr_list")]
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers; each multiaddr ends in `/p2p/<peer id>`.
    #[serde(with = "multiaddr_list")]
    pub bootstrap: Vec<Multiaddr>,
    /// Address of the HTTP server (`/metrics`, `/health`, `/ready`, `/api/...`).
    pub http: SocketAddr,
    /// Directory for the identity key, the API token and node state.
    pub data_dir: PathBuf,
    /// Bearer token for state-changing API calls; empty means "generate one into the data dir".
    pub api_token: String,
    /// Accept private, loopback and link-local addresses that peers announce (a local devnet
    /// needs this; on a public network leave it off).
    pub allow_private_addrs: bool,
    /// Logging: filter and format.
    pub log: LogConfig,
    /// Connection limits of the swarm.
    pub limits: LimitsConfig,
    /// Peer discovery: bootstrap redial and Kademlia walks.
    pub discovery: DiscoveryConfig,
    /// The HTTP server's protections.
    pub api: ApiConfig,
    /// Liveness checks of connected peers.
    pub monitor: MonitorConfig,
    /// The content cache.
    pub cache: CacheConfig,
    /// Content exchange between peers.
    pub content: ContentConfig,
    /// The metrics endpoint's bounds.
    pub metrics: MetricsConfig,
    /// The task market: auctions, providing, reputation.
    pub market: MarketConfig,
    /// Payment channels and the wallet.
    pub payments: PaymentsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".parse().expect("valid literal"),
                "/ip4/0.0.0.0/udp/4001/quic-v1"
                    .parse()
                    .expect("valid literal"),
            ],
            bootstrap: Vec::new(),
            http: SocketAddr::from(([127, 0, 0, 1], 9464)),
            data_dir: PathBuf::from("zerostate-data"),
            api_token: String::new(),
            allow_private_addrs: false,
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            discovery: DiscoveryConfig::default(),
            api: ApiConfig::default(),
            monitor: MonitorConfig::default(),
            cache: CacheConfig::default(),
            content: ContentConfig::default(),
            metrics: MetricsConfig::default(),
            market: MarketConfig::default(),
            payments: PaymentsConfig::default(),
        }
    }
}

/// Why a configuration was refused. Every variant names the key and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or names an unknown key.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key has a value of the wrong type or shape.
    #[error("invalid value for `{key}` (from {origin}): {message}")]
    Value {
        /// The key path, e.g. `api.max_connections`.
        key: String,
        /// Where the value came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// An environment variable starts with `ZEROSTATE_` but names no key.
    #[error(
        "unknown environment variable {var}: no config key `{guess}`; known variables: {known}"
    )]
    UnknownEnv {
        /// The variable.
        var: String,
        /// The key it would set.
        guess: String,
        /// The variables that exist.
        known: String,
    },
    /// A value parsed but fails a semantic check.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The key path.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Values given on the command line; `None`/empty means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`, repeatable.
    pub listen: Vec<String>,
    /// `--bootstrap`, repeatable.
    pub bootstrap: Vec<String>,
    /// `--http`.
    pub http: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

/// Environment variables that are not config keys but are read by the CLI itself.
const NON_KEY_ENV: &[&str] = &["ZEROSTATE_CONFIG", "ZEROSTATE_BIN"];

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then `ZEROSTATE_*` variables
    /// from `env`, then `flags`; and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let mut merged = defaults.clone();
        // Where each key's value came from, for error messages.
        let mut origin: BTreeMap<String, String> = BTreeMap::new();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            // Parse into the typed struct first: this reports unknown keys and bad types with
            // the line and column of the offending text.
            toml::from_str::<Config>(&text).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
            for (key, value) in flatten(&table) {
                origin.insert(key.clone(), format!("config file {}", path.display()));
                set_path(&mut merged, &key, value);
            }
        }

        let keys = flatten(&defaults);
        let env_names: BTreeMap<String, String> =
            keys.keys().map(|k| (env_name(k), k.clone())).collect();
        for (var, raw) in env {
            if !var.starts_with(ENV_PREFIX) || NON_KEY_ENV.contains(&var.as_str()) {
                continue;
            }
            let Some(key) = env_names.get(&var) else {
                return Err(ConfigError::UnknownEnv {
                    guess: var[ENV_PREFIX.len()..].to_lowercase(),
                    var,
                    known: env_names.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            };
            let value = env_value(&keys[key], &raw);
            origin.insert(key.clone(), format!("environment variable {var}"));
            set_path(&mut merged, key, value);
        }

        let mut flag = |key: &str, name: &str, value: toml::Value| {
            origin.insert(key.to_owned(), format!("flag --{name}"));
            set_path(&mut merged, key, value);
        };
        if !flags.listen.is_empty() {
            flag("listen", "listen", strings(&flags.listen));
        }
        if !flags.bootstrap.is_empty() {
            flag("bootstrap", "bootstrap", strings(&flags.bootstrap));
        }
        if let Some(http) = &flags.http {
            flag("http", "http", toml::Value::String(http.clone()));
        }
        if let Some(dir) = &flags.data_dir {
            let dir = toml::Value::String(dir.display().to_string());
            flag("data_dir", "data-dir", dir);
        }

        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
                let key = e.path().to_string();
                let from = origin
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| "defaults".into());
                ConfigError::Value {
                    key,
                    origin: from,
                    message: without_location(&e.into_inner().to_string()),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone do not: bootstrap addresses carry a peer id, limits are
    /// positive, timeouts are non-zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        if self.listen.is_empty() {
            return Err(invalid(
                "listen",
                "at least one listen address is needed, e.g. /ip4/0.0.0.0/tcp/4001".into(),
            ));
        }
        for addr in &self.listen {
            if !addr
                .iter()
                .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1))
            {
                return Err(invalid(
                    "listen",
                    format!(
                        "{addr} is neither TCP nor QUIC; use /ip4/<ip>/tcp/<port> or /ip4/<ip>/udp/<port>/quic-v1"
                    ),
                ));
            }
        }
        for addr in &self.bootstrap {
            bootstrap_peer_id(addr).map_err(|message| invalid("bootstrap", message))?;
        }
        // (key, value, least, most): every number has a floor and a ceiling, so no setting
        // can overflow the arithmetic that uses it (a day for durations is far beyond any
        // sensible value).
        const DAY_MS: u64 = 24 * 3600 * 1000;
        const DAY_SECS: u64 = 24 * 3600;
        const MANY: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        let l = &self.limits;
        let d = &self.discovery;
        let a = &self.api;
        let m = &self.monitor;
        let c = &self.content;
        let ranges: &[(&str, u64, u64, u64)] = &[
            (
                "limits.max_pending_incoming",
                l.max_pending_incoming.into(),
                1,
                MANY,
            ),
            (
                "limits.max_pending_incoming_per_ip",
                l.max_pending_incoming_per_ip.into(),
                1,
                MANY,
            ),
            (
                "limits.max_pending_outgoing",
                l.max_pending_outgoing.into(),
                1,
                MANY,
            ),
            (
                "limits.max_established_incoming",
                l.max_established_incoming.into(),
                1,
                MANY,
            ),
            (
                "limits.max_established_outgoing",
                l.max_established_outgoing.into(),
                1,
                MANY,
            ),
            (
                "limits.max_established_total",
                l.max_established_total.into(),
                1,
                MANY,
            ),
            (
                "limits.max_established_per_peer",
                l.max_established_per_peer.into(),
                1,
                MANY,
            ),
            (
                "limits.idle_connection_timeout_secs",
                l.idle_connection_timeout_secs,
                1,
                DAY_SECS,
            ),
            (
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms,
                100,
                DAY_MS,
            ),
            (
                "discovery.bootstrap_backoff_initial_ms",
                d.bootstrap_backoff_initial_ms,
                1,
                DAY_MS,
            ),
            (
                "discovery.bootstrap_backoff_max_ms",
                d.bootstrap_backoff_max_ms,
                1,
                DAY_MS,
            ),
            (
                "discovery.random_walk_interval_secs",
                d.random_walk_interval_secs,
                1,
                DAY_SECS,
            ),
            (
                "discovery.kad_query_timeout_secs",
                d.kad_query_timeout_secs,
                1,
                DAY_SECS,
            ),
            (
                "api.header_read_timeout_ms",
                a.header_read_timeout_ms,
                1,
                DAY_MS,
            ),
            ("api.request_timeout_ms", a.request_timeout_ms, 1, DAY_MS),
            ("api.max_connections", a.max_connections as u64, 1, MANY),
            (
                "api.max_connections_per_ip",
                a.max_connections_per_ip as u64,
                1,
                MANY,
            ),
            ("api.max_body_bytes", a.max_body_bytes as u64, 1, GIB),
            ("monitor.ping_interval_ms", m.ping_interval_ms, 1, DAY_MS),
            ("monitor.ping_timeout_ms", m.ping_timeout_ms, 1, DAY_MS),
            ("monitor.suspect_after_ms", m.suspect_after_ms, 1, DAY_MS),
            ("monitor.dead_after_ms", m.dead_after_ms, 1, DAY_MS),
            ("monitor.expire_after_ms", m.expire_after_ms, 1, DAY_MS),
            (
                "monitor.suspect_after_failures",
                m.suspect_after_failures.into(),
                1,
                MANY,
            ),
            (
                "monitor.dead_after_failures",
                m.dead_after_failures.into(),
                1,
                MANY,
            ),
            ("monitor.max_peers", m.max_peers as u64, 1, MANY),
            ("cache.max_bytes", self.cache.max_bytes, 1, 1 << 40),
            (
                "cache.max_entries",
                self.cache.max_entries as u64,
                1,
                1 << 32,
            ),
            ("content.max_object_bytes", c.max_object_bytes, 1, GIB),
            ("content.fetch_timeout_ms", c.fetch_timeout_ms, 1, DAY_MS),
            ("content.max_candidates", c.max_candidates as u64, 1, 1024),
            (
                "content.request_timeout_ms",
                c.request_timeout_ms,
                1,
                DAY_MS,
            ),
            ("content.hedge_after_ms", c.hedge_after_ms, 1, DAY_MS),
            (
                "content.max_parallel_requests",
                c.max_parallel_requests as u64,
                1,
                64,
            ),
            (
                "content.max_buffered_bytes",
                c.max_buffered_bytes,
                1,
                64 * GIB,
            ),
        ];
        for &(key, value, least, most) in ranges {
            if value < least || value > most {
                return Err(invalid(
                    key,
                    format!("{value} is out of range: use a value from {least} to {most}"),
                ));
            }
        }
        if l.max_pending_incoming_per_ip >= l.max_pending_incoming {
            return Err(invalid(
                "limits.max_pending_incoming_per_ip",
                "must be smaller than limits.max_pending_incoming, so one address cannot take every slot".into(),
            ));
        }
        if c.max_buffered_bytes < c.max_object_bytes {
            return Err(invalid(
                "content.max_buffered_bytes",
                "must be at least content.max_object_bytes, or no object could be received".into(),
            ));
        }
        if self.discovery.bootstrap_backoff_max_ms < self.discovery.bootstrap_backoff_initial_ms {
            return Err(invalid(
                "discovery.bootstrap_backoff_max_ms",
                "must not be smaller than discovery.bootstrap_backoff_initial_ms".into(),
            ));
        }
        if !(m.suspect_after_ms <= m.dead_after_ms && m.dead_after_ms < m.expire_after_ms) {
            return Err(invalid(
                "monitor.dead_after_ms",
                "need suspect_after_ms <= dead_after_ms < expire_after_ms".into(),
            ));
        }
        if m.dead_after_failures < m.suspect_after_failures {
            return Err(invalid(
                "monitor.dead_after_failures",
                "must not be smaller than monitor.suspect_after_failures".into(),
            ));
        }
        if !self.api_token.is_empty() && self.api_token.len() < 16 {
            return Err(invalid(
                "api_token",
                "must be at least 16 characters (or empty, to generate one)".into(),
            ));
        }
        if !(1..=100_000).contains(&self.metrics.max_peer_series) {
            return Err(invalid(
                "metrics.max_peer_series",
                format!(
                    "{} is out of range: use a value from 1 to 100000",
                    self.metrics.max_peer_series
                ),
            ));
        }
        if !(1..=100_000).contains(&self.metrics.max_channel_series) {
            return Err(invalid(
                "metrics.max_channel_series",
                format!(
                    "{} is out of range: use a value from 1 to 100000",
                    self.metrics.max_channel_series
                ),
            ));
        }
        self.market
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        self.payments
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(invalid("log.filter", format!("not a tracing filter: {e}")));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "`{}` is not an address and port, e.g. 0.0.0.0:9465 (or empty for none)",
                    self.metrics.listen
                ),
            ));
        }
        if !(1..=10_000).contains(&self.metrics.max_sd_targets) {
            return Err(invalid(
                "metrics.max_sd_targets",
                format!(
                    "{} is out of range: use a value from 1 to 10000",
                    self.metrics.max_sd_targets
                ),
            ));
        }
        if !self.metrics.announce_url.is_empty() {
            MetricsUrl::parse_own(&self.metrics.announce_url, self.allow_private_addrs).map_err(
                |e| {
                    invalid(
                        "metrics.announce_url",
                        format!(
                            "`{}`: {e}; give the http://<ip>:<port>/metrics address peers' Prometheus can reach, e.g. http://<public IP>:0/metrics (port 0: the port /metrics is served on)",
                            self.metrics.announce_url
                        ),
                    )
                },
            )?;
        }
        Ok(())
    }

    /// The address of the `/metrics`-only server (`metrics.listen`), if any. Valid after
    /// [`Config::validate`].
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics.listen.parse().ok()
    }

    /// The metrics endpoint to announce (`metrics.announce_url`), its port 0 replaced by
    /// `metrics_port` (the port `/metrics` is served on). Valid after [`Config::validate`].
    pub fn metrics_announce(&self, metrics_port: u16) -> Option<MetricsUrl> {
        if self.metrics.announce_url.is_empty() {
            return None;
        }
        MetricsUrl::parse_own(&self.metrics.announce_url, self.allow_private_addrs)
            .ok()
            .map(|url| url.with_bound_port(metrics_port))
    }

    /// The bootstrap peers as (peer id, address) pairs. Valid after [`Config::validate`].
    pub fn bootstrap_peers(&self) -> Vec<(PeerId, Multiaddr)> {
        self.bootstrap
            .iter()
            .filter_map(|a| bootstrap_peer_id(a).ok().map(|id| (id, a.clone())))
            .collect()
    }

    /// The swarm's part of the configuration.
    pub fn p2p_config(&self) -> P2pConfig {
        P2pConfig {
            listen: self.listen.clone(),
            bootstrap: self.bootstrap_peers(),
            allow_private_addrs: self.allow_private_addrs,
            limits: self.limits.clone(),
            discovery: self.discovery.clone(),
            monitor: self.monitor.clone(),
            max_content_bytes: self.content.max_object_bytes,
            max_buffered_content_bytes: self.content.max_buffered_bytes,
            max_provided_keys: self.cache.max_entries,
            metrics_announce: None,
        }
    }

    /// Whether the HTTP server listens on a loopback address only.
    pub fn http_is_loopback(&self) -> bool {
        match self.http.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => ip.is_loopback(),
        }
    }
}

/// The peer id at the end of a bootstrap address, or a message saying what is wrong.
pub fn bootstrap_peer_id(addr: &Multiaddr) -> Result<PeerId, String> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Ok(id),
        _ => Err(format!(
            "{addr} does not end in /p2p/<peer id>; append the peer id of the bootstrap node (`zerostate id` prints it)"
        )),
    }
}

/// Drops the "in `key`" line the TOML deserializer appends (our message names the key).
fn without_location(message: &str) -> String {
    message
        .lines()
        .filter(|l| !l.starts_with("in `"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end()
        .to_owned()
}

/// `a.b_c` -> `ZEROSTATE_A_B_C`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

/// Turns an environment string into a TOML value shaped like the key's default.
fn env_value(default: &toml::Value, raw: &str) -> toml::Value {
    let raw = raw.trim();
    match default {
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        toml::Value::Integer(_) => raw
            .parse::<i64>()
            .map(toml::Value::Integer)
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned())),
        toml::Value::Float(_) => raw
            .parse::<f64>()
            .map(toml::Value::Float)
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned())),
        toml::Value::Boolean(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => toml::Value::String(raw.to_owned()),
        },
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn strings(values: &[String]) -> toml::Value {
    toml::Value::Array(values.iter().cloned().map(toml::Value::String).collect())
}

/// Flattens nested tables into `a.b` keys (arrays stay whole).
fn flatten(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(inner) => {
                for (ik, iv) in flatten(inner) {
                    out.insert(format!("{k}.{ik}"), iv);
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

mod multiaddr_list {
    use libp2p::Multiaddr;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(addrs: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(addrs.iter().map(|a| a.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|s| {
                s.parse::<Multiaddr>().map_err(|e| {
                    D::Error::custom(format!(
                        "`{s}` is not a multiaddr ({e}); expected e.g. /ip4/127.0.0.1/tcp/4001"
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)], flags: Overrides) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(file.map(|_| path.as_path()), env, &flags).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(None, &[], Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let file = "http = \"127.0.0.1:1000\"\n[api]\nmax_connections = 5\n";
        let c = load(Some(file), &[], Overrides::default()).unwrap();
        assert_eq!(c.http.port(), 1000);
        assert_eq!(c.api.max_connections, 5);

        let env = [
            ("ZEROSTATE_HTTP", "127.0.0.1:2000"),
            ("ZEROSTATE_API_MAX_CONNECTIONS", "7"),
        ];
        let c = load(Some(file), &env, Overrides::default()).unwrap();
        assert_eq!(c.http.port(), 2000);
        assert_eq!(c.api.max_connections, 7);

        let flags = Overrides {
            http: Some("127.0.0.1:3000".into()),
            ..Default::default()
        };
        let c = load(Some(file), &env, flags).unwrap();
        assert_eq!(c.http.port(), 3000);
        assert_eq!(c.api.max_connections, 7);
    }

    #[test]
    fn env_lists_are_comma_separated() {
        let env = [(
            "ZEROSTATE_LISTEN",
            "/ip4/127.0.0.1/tcp/0, /ip4/127.0.0.1/udp/0/quic-v1",
        )];
        let c = load(None, &env, Overrides::default()).unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let e = load(Some("listen_port = 5\n"), &[], Overrides::default()).unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn unknown_env_var_is_named() {
        let e = load(None, &[("ZEROSTATE_HTTP_PORT", "1")], Overrides::default()).unwrap_err();
        assert!(e.contains("ZEROSTATE_HTTP_PORT"), "{e}");
    }

    #[test]
    fn bad_env_value_names_key_and_source() {
        let e = load(
            None,
            &[("ZEROSTATE_API_MAX_CONNECTIONS", "many")],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("api.max_connections"), "{e}");
        assert!(e.contains("ZEROSTATE_API_MAX_CONNECTIONS"), "{e}");
    }

    #[test]
    fn a_metrics_url_peers_would_refuse_is_refused_at_start() {
        let url = "ZEROSTATE_METRICS_ANNOUNCE_URL";
        let e = load(
            None,
            &[(url, "http://node1:9464/metrics")],
            Overrides::default(),
        );
        let e = e.unwrap_err();
        assert!(
            e.contains("metrics.announce_url") && e.contains("IP"),
            "{e}"
        );
        // Loopback only where peers accept private addresses.
        let e = load(None, &[(url, "http://127.0.0.1:0/m")], Overrides::default()).unwrap_err();
        assert!(e.contains("metrics.announce_url"), "{e}");
        let private = ("ZEROSTATE_ALLOW_PRIVATE_ADDRS", "true");
        let c = load(
            None,
            &[(url, "http://127.0.0.1:0/m"), private],
            Overrides::default(),
        );
        let announced = c.unwrap().metrics_announce(9465).unwrap();
        assert_eq!(announced.to_string(), "http://127.0.0.1:9465/m");
        let listen = [("ZEROSTATE_METRICS_LISTEN", "9465")];
        let e = load(None, &listen, Overrides::default()).unwrap_err();
        assert!(e.contains("metrics.listen"), "{e}");
    }

    #[test]
    fn bootstrap_without_peer_id_is_refused() {
        let flags = Overrides {
            bootstrap: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            ..Default::default()
        };
        let e = load(None, &[], flags).unwrap_err();
        assert!(e.contains("bootstrap") && e.contains("/p2p/"), "{e}");
    }

    #[test]
    fn bad_multiaddr_names_key() {
        let flags = Overrides {
            listen: vec!["tcp://0.0.0.0:1".into()],
            ..Default::default()
        };
        let e = load(None, &[], flags).unwrap_err();
        assert!(e.contains("listen") && e.contains("flag --listen"), "{e}");
    }

    #[test]
    fn zero_limit_is_refused() {
        let e = load(
            Some("[limits]\nmax_established_total = 0\n"),
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("limits.max_established_total"), "{e}");
    }

    #[test]
    fn huge_values_are_refused_with_the_allowed_range() {
        let e = load(
            Some("[discovery]\nbootstrap_backoff_max_ms = 9223372036854775807\n"),
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("discovery.bootstrap_backoff_max_ms"), "{e}");
        assert!(e.contains("out of range") && e.contains("86400000"), "{e}");
        let e = load(
            None,
            &[("ZEROSTATE_MONITOR_PING_INTERVAL_MS", "100000000000")],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("monitor.ping_interval_ms"), "{e}");
        let e = load(
            Some("[limits]\nmax_pending_incoming = 8\nmax_pending_incoming_per_ip = 8\n"),
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("max_pending_incoming_per_ip"), "{e}");
    }

    #[test]
    fn shipped_default_toml_matches_defaults() {
        let text = include_str!("../config/default.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        assert_eq!(parsed, Config::default());
        // And it lists every key.
        let table: toml::Table = toml::from_str(text).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(
            flatten(&table).keys().collect::<Vec<_>>(),
            flatten(&defaults).keys().collect::<Vec<_>>()
        );
    }
}
