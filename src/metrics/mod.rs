//! The node's one metrics registry and the metric families of each area.
//!
//! Layout: the root [`Registry`] holds the standard `process_*` metrics; everything else lives
//! under the `zerostate` prefix: `zerostate_build_info`, `zerostate_tokio_*`, our own
//! `zerostate_p2p_*` families, and libp2p-metrics (`zerostate_libp2p_*`) plus gossipsub's own
//! metrics (`zerostate_gossipsub_*`). Components receive their families at construction; the
//! registry is then frozen in an `Arc` and only encoded.

mod capped;
mod process;
mod runtime;

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config_value::{ConfigValueError, in_range};

pub use capped::CappedKeys;
pub use process::ProcessCollector;
pub use runtime::RuntimeCollector;

/// Namespace of all our metrics.
pub const NAMESPACE: &str = "zerostate";

/// Duration buckets of the metrics contract, in seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Cost buckets of the metrics contract, in amount units.
pub const COST_BUCKETS: [f64; 7] = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0];

/// The content type `/metrics` answers with.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bounds of the metrics endpoint (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Most peers with series in each peer-labelled family; the least recently active peer's
    /// series are removed to make room.
    pub max_peer_series: usize,
    /// Most channels with series in `channel_balances`; a settled channel's series are
    /// removed, and the least recently active channel's to make room.
    pub max_channel_series: usize,
    /// A second address serving `/metrics` only (e.g. `0.0.0.0:9465`, for a Prometheus on
    /// another host), so that the API can stay on 127.0.0.1; empty (`None`): none.
    #[serde(with = "crate::config_value::optional_socket_addr")]
    pub listen: Option<SocketAddr>,
    /// The URL of this node's `/metrics` that it announces to its peers, so that their
    /// `GET /api/v1/sd` lists it; empty: nothing is announced. The host must be an IP address
    /// peers accept; port 0 stands for the port `/metrics` is served on (`listen` if set,
    /// else `http`).
    pub announce_url: String,
    /// Most targets `GET /api/v1/sd` lists, this node's included.
    pub max_sd_targets: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_peer_series: 100,
            max_channel_series: 100,
            listen: None,
            announce_url: String::new(),
            max_sd_targets: 256,
        }
    }
}

impl MetricsConfig {
    /// Checks the caps on series and targets. (`announce_url` is checked with the top-level
    /// keys: whether its host is acceptable depends on `allow_private_addrs`.)
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        const SERIES: RangeInclusive<usize> = 1..=100_000;
        in_range("metrics.max_peer_series", self.max_peer_series, SERIES)?;
        in_range(
            "metrics.max_channel_series",
            self.max_channel_series,
            SERIES,
        )?;
        in_range("metrics.max_sd_targets", self.max_sd_targets, 1..=10_000)
    }
}

/// Label set `{outcome="..."}`, shared by the families that count outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// A fixed, code-defined outcome name.
    pub outcome: &'static str,
}

/// Label set `{reason="..."}`, shared by the families that count refusals and failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed, code-defined reason name.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelName {
    label: &'static str,
}

/// `zerostate_metrics_label_values{label}` and `zerostate_metrics_label_values_limit{label}`:
/// how many values of each capped label (`peer_id`, `channel_id`) hold series, and the cap.
/// A family at its cap evicts its least recently active value for each new one.
#[derive(Debug, Clone, Default)]
pub struct LabelValueMetrics {
    in_use: Family<LabelName, Gauge>,
    limit: Family<LabelName, Gauge>,
}

impl LabelValueMetrics {
    /// Registers both families into `registry` (the `zerostate` registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("metrics");
        r.register(
            "label_values",
            "Values of a capped label (peer_id, channel_id) that currently hold series",
            m.in_use.clone(),
        );
        r.register(
            "label_values_limit",
            "The cap of a capped label (metrics.max_peer_series, metrics.max_channel_series)",
            m.limit.clone(),
        );
        m
    }

    /// Sets the cap of `label` and returns the gauge its [`CappedKeys`] keeps up to date.
    pub fn for_label(&self, label: &'static str, cap: usize) -> Gauge {
        let key = LabelName { label };
        self.limit
            .get_or_create(&key)
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
        self.in_use.get_or_create(&key).clone()
    }
}

/// `zerostate_node_ready`: 1 while the node is ready (what `GET /ready` answers 200 to), else 0.
pub fn register_ready(registry: &mut Registry) -> Gauge {
    let ready = Gauge::default();
    registry.register(
        "node_ready",
        "1 while the node is ready to serve (listening, and connected to a peer when bootstrap peers are configured: GET /ready answers 200), else 0",
        ready.clone(),
    );
    ready
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Creates the root registry with the process collector, and returns it.
///
/// Register namespaced families into `root.sub_registry_with_prefix(NAMESPACE)`; see
/// [`register_node_info`].
pub fn new_registry() -> Registry {
    let mut root = Registry::default();
    root.register_collector(Box::new(ProcessCollector::new()));
    root
}

/// Registers `build_info` and the tokio runtime collector into the `zerostate` registry.
pub fn register_node_info(registry: &mut Registry, runtime: tokio::runtime::Handle) {
    let build_info = Family::<BuildLabels, Gauge>::default();
    build_info
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
    registry.register(
        "build_info",
        "Build information of this node; the value is always 1",
        build_info,
    );
    registry.register_collector(Box::new(RuntimeCollector::new(runtime)));
}

/// Encodes the registry as OpenMetrics text (ending in `# EOF`).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    Encoder::default().encode(registry)
}

/// Encodes a registry scrape after scrape, into a buffer sized from the last text: at 10,000
/// series (1 MiB) the text is written without growing the buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    last_len: std::sync::atomic::AtomicUsize,
}

impl Encoder {
    /// [`encode`], remembering the size of the text for the next time.
    pub fn encode(&self, registry: &Registry) -> Result<String, std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last_len.load(Relaxed);
        let mut out = String::with_capacity((last + last / 16).max(16 * 1024));
        prometheus_client::encoding::text::encode(&mut out, registry)?;
        self.last_len.store(out.len(), Relaxed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registry_encodes_process_runtime_and_build_info() {
        let mut root = new_registry();
        register_node_info(
            root.sub_registry_with_prefix(NAMESPACE),
            tokio::runtime::Handle::current(),
        );
        let text = encode(&root).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_threads ",
            "process_start_time_seconds ",
            "zerostate_tokio_workers ",
            "zerostate_tokio_alive_tasks ",
            "zerostate_tokio_global_queue_depth ",
            "zerostate_build_info{version=\"",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            rss > 1e6,
            "a running test process has more than 1 MB resident"
        );
    }
}
