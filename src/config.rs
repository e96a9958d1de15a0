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

pub use crate::config_value::{ConfigValueError, DAY_MS, DAY_SECS, GIB, MANY, in_range};
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

impl LogConfig {
    /// Checks that `filter` is a `tracing` filter.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        tracing_subscriber::EnvFilter::try_new(&self.filter)
            .map(drop)
            .map_err(|e| ConfigValueError::new("log.filter", format!("not a tracing filter: {e}")))
    }
}

/// The `[api]` section's check. (It lives here, with the other keys' checks, because the
/// section's type belongs to the HTTP server.)
impl ApiConfig {
    /// Checks the ranges of the timeouts, connection caps and body size.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        in_range(
            "api.header_read_timeout_ms",
            self.header_read_timeout_ms,
            1..=DAY_MS,
        )?;
        in_range(
            "api.request_timeout_ms",
            self.request_timeout_ms,
            1..=DAY_MS,
        )?;
        in_range(
            "api.max_connections",
            self.max_connections,
            1..=MANY as usize,
        )?;
        let per_ip = self.max_connections_per_ip;
        in_range("api.max_connections_per_ip", per_ip, 1..=MANY as usize)?;
        in_range("api.max_body_bytes", self.max_body_bytes, 1..=GIB as usize)
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
    /// The config file is not valid TOML.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The config file names a key that does not exist.
    #[error("config file {path}: unknown key `{key}`; {hint}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The unknown key, e.g. `api.max_conns`.
        key: String,
        /// The closest known key, or where the keys are listed.
        hint: Hint,
    },
    /// A key has a value of the wrong type or shape, or out of range.
    #[error("invalid value for `{key}` (from {origin}): {message}")]
    Value {
        /// The key path, e.g. `api.max_connections`.
        key: String,
        /// Where the value came from.
        origin: Source,
        /// What is wrong, with the allowed values.
        message: String,
    },
    /// An environment variable starts with `ZEROSTATE_` but names no key.
    #[error("unknown environment variable {var}: no config key `{guess}`; {hint}")]
    UnknownEnv {
        /// The variable.
        var: String,
        /// The key it would set.
        guess: String,
        /// The closest known variable, or where the variables are listed.
        hint: Hint,
    },
}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Set nowhere: the built-in default (or a value set in code).
    Default,
    /// The config file.
    File(PathBuf),
    /// A `ZEROSTATE_*` environment variable.
    Env(String),
    /// A command-line flag, named without its dashes.
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("the default"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(name) => write!(f, "flag --{name}"),
        }
    }
}

/// Where each key's value came from; a key not listed has its default.
#[derive(Debug, Clone, Default)]
pub struct Sources(BTreeMap<String, Source>);

impl Sources {
    /// Records that `key` was set by `source` (a later source replaces an earlier one).
    pub fn set(&mut self, key: &str, source: Source) {
        self.0.insert(key.to_owned(), source);
    }

    /// Where `key`'s value came from. A path below a key (`listen[1]`) has the key's source.
    pub fn of(&self, key: &str) -> Source {
        let mut key = key;
        loop {
            if let Some(source) = self.0.get(key) {
                return source.clone();
            }
            match key.rfind(['.', '[']) {
                Some(end) => key = &key[..end],
                None => return Source::Default,
            }
        }
    }
}

/// What to tell the user about a name that does not exist: the closest one, the ones below
/// it, or where all of them are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A known name a typo away.
    DidYouMean(String),
    /// The name is a section; these are its names.
    Section(Vec<String>),
    /// Nothing close.
    SeeDefaults,
}

impl Hint {
    /// The hint for `unknown` among `known`: the closest name within a few edits, else the
    /// names that `unknown` is a prefix of (followed by `separator`), else the file listing
    /// them all.
    fn for_name<'a>(
        unknown: &str,
        known: impl IntoIterator<Item = &'a String> + Clone,
        separator: char,
    ) -> Self {
        let closest = known
            .clone()
            .into_iter()
            .map(|name| (strsim::levenshtein(unknown, name), name))
            .min();
        // A quarter of the name, at least 2 edits: `BOOTSTRAPS` -> `BOOTSTRAP`, not `LOG` -> `HTTP`.
        let tolerance = (unknown.len() / 4).max(2);
        if let Some((distance, name)) = closest
            && distance <= tolerance
        {
            return Self::DidYouMean(name.clone());
        }
        let section = format!("{unknown}{separator}");
        let below: Vec<String> = known
            .into_iter()
            .filter(|name| name.starts_with(&section))
            .cloned()
            .collect();
        if below.is_empty() {
            Self::SeeDefaults
        } else {
            Self::Section(below)
        }
    }
}

impl Hint {
    /// The hint with `prefix` before every name.
    fn prefixed(self, prefix: &str) -> Self {
        match self {
            Self::DidYouMean(name) => Self::DidYouMean(format!("{prefix}{name}")),
            Self::Section(names) => {
                Self::Section(names.into_iter().map(|n| format!("{prefix}{n}")).collect())
            }
            Self::SeeDefaults => Self::SeeDefaults,
        }
    }
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DidYouMean(name) => write!(f, "did you mean {name}?"),
            Self::Section(names) => write!(f, "it is a section; set one of {}", names.join(", ")),
            Self::SeeDefaults => f.write_str("config/default.toml lists every key"),
        }
    }
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
    /// from `env`, then `flags`; and validates the result. Every refusal names the key and
    /// where its value came from.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let keys = flatten(&defaults);
        let mut merged = defaults;
        let mut sources = Sources::default();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let file_error = |e: toml::de::Error| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            };
            let table: toml::Table = toml::from_str(&text).map_err(file_error)?;
            let flat = flatten(&table);
            if let Some(key) = flat.keys().find(|k| is_unknown_key(k, &keys)) {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: key.clone(),
                    hint: Hint::for_name(key, keys.keys(), '.'),
                });
            }
            // Parse into the typed struct too: this reports bad values with their key, line
            // and column.
            let typed = toml::Deserializer::parse(&text).map_err(file_error)?;
            serde_path_to_error::deserialize::<_, Config>(typed).map_err(|e| {
                ConfigError::Value {
                    key: e.path().to_string(),
                    origin: Source::File(path.to_owned()),
                    message: e.inner().to_string().trim_end().to_owned(),
                }
            })?;
            for (key, value) in flat {
                sources.set(&key, Source::File(path.to_owned()));
                set_path(&mut merged, &key, value);
            }
        }

        let env_names: BTreeMap<String, String> =
            keys.keys().map(|k| (env_name(k), k.clone())).collect();
        for (var, raw) in env {
            if !var.starts_with(ENV_PREFIX) || NON_KEY_ENV.contains(&var.as_str()) {
                continue;
            }
            let Some(key) = env_names.get(&var) else {
                // Compared without the prefix, which every name shares.
                let name = &var[ENV_PREFIX.len()..];
                let known: Vec<String> = env_names
                    .keys()
                    .map(|v| v[ENV_PREFIX.len()..].to_owned())
                    .collect();
                return Err(ConfigError::UnknownEnv {
                    guess: name.to_lowercase(),
                    hint: Hint::for_name(name, &known, '_').prefixed(ENV_PREFIX),
                    var,
                });
            };
            let value = env_value(&keys[key], &raw);
            sources.set(key, Source::Env(var));
            set_path(&mut merged, key, value);
        }

        let mut flag = |key: &str, name: &'static str, value: toml::Value| {
            sources.set(key, Source::Flag(name));
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
                ConfigError::Value {
                    origin: sources.of(&key),
                    key,
                    message: without_location(&e.into_inner().to_string()),
                }
            })?;
        config.validate_from(&sources)?;
        Ok(config)
    }

    /// Checks what the types alone do not (ranges, bootstrap peer ids, relations between
    /// keys), section by section. A refusal names every value as coming from the defaults;
    /// [`Config::load`] names the file, variable or flag instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_from(&Sources::default())
    }

    /// [`Config::validate`], naming where the refused value came from by `sources`.
    pub fn validate_from(&self, sources: &Sources) -> Result<(), ConfigError> {
        self.check().map_err(|e| ConfigError::Value {
            key: e.key.to_owned(),
            origin: sources.of(e.key),
            message: e.message,
        })
    }

    /// Every section's check, then the top-level keys'.
    fn check(&self) -> Result<(), ConfigValueError> {
        self.log.validate()?;
        self.limits.validate()?;
        self.discovery.validate()?;
        self.api.validate()?;
        self.monitor.validate()?;
        self.cache.validate()?;
        self.content.validate()?;
        self.metrics.validate()?;
        self.market.validate()?;
        self.payments.validate()?;
        self.check_top_level()
    }

    /// The keys outside sections, and `metrics.announce_url`, which depends on one of them
    /// (`allow_private_addrs`).
    fn check_top_level(&self) -> Result<(), ConfigValueError> {
        if self.listen.is_empty() {
            return Err(ConfigValueError::new(
                "listen",
                "at least one listen address is needed, e.g. /ip4/0.0.0.0/tcp/4001",
            ));
        }
        if let Some(addr) = self.listen.iter().find(|addr| {
            !addr
                .iter()
                .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1))
        }) {
            return Err(ConfigValueError::new(
                "listen",
                format!(
                    "{addr} is neither TCP nor QUIC; use /ip4/<ip>/tcp/<port> or /ip4/<ip>/udp/<port>/quic-v1"
                ),
            ));
        }
        for addr in &self.bootstrap {
            bootstrap_peer_id(addr)
                .map_err(|message| ConfigValueError::new("bootstrap", message))?;
        }
        if !self.api_token.is_empty() && self.api_token.len() < 16 {
            return Err(ConfigValueError::new(
                "api_token",
                "must be at least 16 characters (or empty, to generate one)",
            ));
        }
        if !self.metrics.announce_url.is_empty() {
            MetricsUrl::parse_own(&self.metrics.announce_url, self.allow_private_addrs).map_err(
                |e| {
                    ConfigValueError::new(
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

/// Whether a key of the config file is unknown: neither a key, nor a section of keys, nor
/// below a key (`http.port` below `http` is left to the typed parse, which names the type the
/// key wants).
fn is_unknown_key(key: &str, known: &BTreeMap<String, toml::Value>) -> bool {
    let section = format!("{key}.");
    let is_section = known.keys().any(|k| k.starts_with(&section));
    let below_known = key
        .match_indices('.')
        .any(|(end, _)| known.contains_key(&key[..end]));
    !known.contains_key(key) && !is_section && !below_known
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
    fn task_kinds_are_read_by_name_and_an_unknown_one_is_named() {
        use crate::market::TaskKind;
        let env = [("ZEROSTATE_MARKET_PROVIDER_KINDS", "matmul")];
        let c = load(None, &env, Overrides::default()).unwrap();
        assert_eq!(c.market.provider.kinds, [TaskKind::Matmul]);
        let file = "[market.provider]\nkinds = [\"pow\", \"sort\"]\n";
        let e = load(Some(file), &[], Overrides::default()).unwrap_err();
        assert!(
            e.contains("market.provider.kinds") && e.contains("sort"),
            "{e}"
        );
        assert!(e.contains("pow") && e.contains("matmul"), "{e}");
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
        // Not the list of every variable.
        assert!(!e.contains("ZEROSTATE_PAYMENTS_ACK_TIMEOUT_MS"), "{e}");
    }

    #[test]
    fn a_mistyped_env_var_gets_a_suggestion() {
        let typo = |var: &str| load(None, &[(var, "1")], Overrides::default()).unwrap_err();
        let e = typo("ZEROSTATE_BOOTSTRAPS");
        assert!(e.ends_with("did you mean ZEROSTATE_BOOTSTRAP?"), "{e}");
        let e = typo("ZEROSTATE_API_MAX_CONECTIONS");
        assert!(
            e.ends_with("did you mean ZEROSTATE_API_MAX_CONNECTIONS?"),
            "{e}"
        );
        let e = typo("ZEROSTATE_MARKET_BID_WINDOW");
        assert!(
            e.ends_with("did you mean ZEROSTATE_MARKET_BID_WINDOW_MS?"),
            "{e}"
        );
        // A section names its variables; nothing close names the file that lists them.
        let e = typo("ZEROSTATE_LOG");
        assert!(
            e.contains("ZEROSTATE_LOG_FILTER, ZEROSTATE_LOG_FORMAT") && !e.contains("mean"),
            "{e}"
        );
        let e = typo("ZEROSTATE_COLOUR_SCHEME");
        assert!(e.ends_with("config/default.toml lists every key"), "{e}");
    }

    #[test]
    fn a_mistyped_file_key_gets_a_suggestion() {
        let e = load(
            Some("[api]\nmax_conections = 4\n"),
            &[],
            Overrides::default(),
        );
        let e = e.unwrap_err();
        assert!(
            e.contains("unknown key `api.max_conections`")
                && e.ends_with("did you mean api.max_connections?"),
            "{e}"
        );
        // A table where a value belongs is left to the typed parse, which names the type.
        let e = load(Some("log = \"debug\"\n"), &[], Overrides::default()).unwrap_err();
        assert!(e.contains("LogConfig"), "{e}");
    }

    /// A section's refusal: its full key and the allowed range.
    fn refuses(result: Result<(), ConfigValueError>, key: &str, allowed: &str) {
        let e = result.unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(allowed), "{e}");
    }

    #[test]
    fn each_section_refuses_an_out_of_range_value_naming_its_key() {
        let limits = LimitsConfig {
            max_established_total: 0,
            ..Default::default()
        };
        let key = "limits.max_established_total";
        refuses(
            limits.validate(),
            key,
            "0 is out of range: use a value from 1 to 1048576",
        );
        let discovery = DiscoveryConfig {
            kad_query_timeout_secs: DAY_SECS + 1,
            ..Default::default()
        };
        let key = "discovery.kad_query_timeout_secs";
        refuses(discovery.validate(), key, "from 1 to 86400");
        let monitor = MonitorConfig {
            max_peers: 0,
            ..Default::default()
        };
        refuses(monitor.validate(), "monitor.max_peers", "from 1 to 1048576");
        let api = ApiConfig {
            max_body_bytes: 0,
            ..Default::default()
        };
        refuses(api.validate(), "api.max_body_bytes", "from 1 to 1073741824");
        let log = LogConfig {
            filter: "zerostate=loud".into(),
            ..Default::default()
        };
        refuses(log.validate(), "log.filter", "not a tracing filter");
        let cache = CacheConfig {
            max_bytes: 0,
            ..Default::default()
        };
        refuses(
            cache.validate(),
            "cache.max_bytes",
            "from 1 to 1099511627776",
        );
        let content = ContentConfig {
            max_parallel_requests: 65,
            ..Default::default()
        };
        refuses(
            content.validate(),
            "content.max_parallel_requests",
            "from 1 to 64",
        );
        let metrics = MetricsConfig {
            max_sd_targets: 10_001,
            ..Default::default()
        };
        refuses(
            metrics.validate(),
            "metrics.max_sd_targets",
            "from 1 to 10000",
        );
        let metrics = MetricsConfig {
            max_channel_series: 0,
            ..Default::default()
        };
        refuses(
            metrics.validate(),
            "metrics.max_channel_series",
            "from 1 to 100000",
        );
        let market = MarketConfig {
            bid_window_ms: 0,
            ..Default::default()
        };
        refuses(market.validate(), "market.bid_window_ms", "from 1 to 60000");
        let mut market = MarketConfig::default();
        market.provider.price_jitter_percent = 101;
        let key = "market.provider.price_jitter_percent";
        refuses(market.validate(), key, "from 0 to 100");
        let reputation = ReputationConfig {
            max_peers: 0,
            ..Default::default()
        };
        let key = "market.reputation.max_peers";
        refuses(reputation.validate(), key, "from 1 to 10000000");
        let reputation = ReputationConfig {
            max_gain: 1.5,
            ..Default::default()
        };
        let key = "market.reputation.max_gain";
        refuses(
            reputation.validate(),
            key,
            "1.5 is out of range: use a value from 0 to 1",
        );
        let payments = PaymentsConfig {
            challenge_secs: 0,
            ..Default::default()
        };
        refuses(
            payments.validate(),
            "payments.challenge_secs",
            "from 1 to 86400",
        );
    }

    #[test]
    fn an_out_of_range_value_names_where_it_came_from() {
        let e = load(
            Some("[payments]\nchallenge_secs = 0\n"),
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.starts_with("invalid value for `payments.challenge_secs` (from config file ")
                && e.contains("c.toml): 0 is out of range: use a value from 1 to 86400"),
            "{e}"
        );
        // The environment wins over the file, and is named.
        let env = [("ZEROSTATE_MARKET_BID_WINDOW_MS", "0")];
        let file = Some("[market]\nbid_window_ms = 500\n");
        let e = load(file, &env, Overrides::default()).unwrap_err();
        assert_eq!(
            e,
            "invalid value for `market.bid_window_ms` (from environment variable ZEROSTATE_MARKET_BID_WINDOW_MS): 0 is out of range: use a value from 1 to 60000"
        );
        let flags = Overrides {
            listen: vec!["/ip4/127.0.0.1/udp/4001".into()],
            ..Default::default()
        };
        let e = load(None, &[], flags).unwrap_err();
        assert!(
            e.starts_with("invalid value for `listen` (from flag --listen): "),
            "{e}"
        );
        // A value set nowhere is the default's, though another key's value refuses it.
        let file = Some("[limits]\nmax_pending_incoming = 4\n");
        let e = load(file, &[], Overrides::default()).unwrap_err();
        assert!(
            e.starts_with("invalid value for `limits.max_pending_incoming_per_ip` (from the default): must be smaller"),
            "{e}"
        );
    }

    #[test]
    fn metrics_listen_is_an_optional_address() {
        let env = [("ZEROSTATE_METRICS_LISTEN", "127.0.0.1:9465")];
        let c = load(None, &env, Overrides::default()).unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9465".parse().unwrap()));
        assert_eq!(Config::default().metrics.listen, None);
        let e = load(
            Some("[metrics]\nlisten = \"localhost\"\n"),
            &[],
            Overrides::default(),
        );
        let e = e.unwrap_err();
        assert!(
            e.contains("`metrics.listen`") && e.contains("`localhost` is not an address and port"),
            "{e}"
        );
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
