//! Tokio runtime metrics, read from the runtime's handle on each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// Collects the worker count, alive tasks and global queue depth of one tokio runtime.
#[derive(Debug)]
pub struct RuntimeCollector {
    handle: tokio::runtime::Handle,
}

impl RuntimeCollector {
    /// A collector for the runtime behind `handle`.
    pub fn new(handle: tokio::runtime::Handle) -> Self {
        Self { handle }
    }
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.handle.metrics();
        let values = [
            (
                "tokio_workers",
                "Worker threads of the tokio runtime.",
                m.num_workers(),
            ),
            (
                "tokio_alive_tasks",
                "Tasks currently alive in the tokio runtime.",
                m.num_alive_tasks(),
            ),
            (
                "tokio_global_queue_depth",
                "Tasks waiting in the runtime's global queue.",
                m.global_queue_depth(),
            ),
        ];
        for (name, help, value) in values {
            let g = ConstGauge::new(value as i64);
            let enc = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(enc)?;
        }
        Ok(())
    }
}
