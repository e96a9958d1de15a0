//! The accept loop: [`bind`] the listener and [`serve`] an app on it, with a header-read
//! timeout and connection caps in total and per client address, which `axum::serve` does not
//! have. Connections refused for a cap are counted in [`HttpMetrics`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ApiConfig;
use crate::metrics::ReasonLabels;

/// Time an open connection gets to finish its request once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The HTTP server's metrics.
#[derive(Clone, Debug, Default)]
pub struct HttpMetrics {
    refused: Family<ReasonLabels, Counter>,
}

impl HttpMetrics {
    /// Registers into the `zerostate` registry.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.sub_registry_with_prefix("http").register(
            "connections_refused",
            "HTTP connections closed at once because of a connection cap, by reason (per_ip, busy)",
            m.refused.clone(),
        );
        m
    }

    fn refused(&self, reason: &'static str) {
        let c = self.refused.get_or_create(&ReasonLabels { reason });
        c.inc();
    }
}

/// Binds the HTTP listener, with a message that says what to change on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind HTTP server to {addr}: {e} (set `http`, ZEROSTATE_HTTP or --http to a free address, or port 0)"),
        )
    })
}

/// Connection slots: at most `total` at once, and `per_ip` from one client address.
#[derive(Clone, Debug)]
struct Slots {
    inner: Arc<Mutex<SlotCounts>>,
}

#[derive(Debug)]
struct SlotCounts {
    total: usize,
    max_total: usize,
    max_per_ip: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A taken slot; dropping it frees the slot.
#[derive(Debug)]
struct Slot {
    slots: Slots,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Slots {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(SlotCounts {
                total: 0,
                max_total,
                max_per_ip,
                per_ip: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotCounts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a client at `ip`, or says which cap is reached.
    fn take(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut c = self.lock();
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= c.max_per_ip {
            return Err("per_ip");
        }
        if c.total >= c.max_total {
            return Err("busy");
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        drop(c);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

/// Serves `app` on `listener` until `cancel` fires: at most `max_connections` at once and
/// `max_connections_per_ip` per client address (further connections are closed at once and
/// counted), each with a header-read timeout; on cancel, open connections get a short grace
/// period.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ApiConfig,
    metrics: HttpMetrics,
    cancel: CancellationToken,
) {
    let slots = Slots::new(config.max_connections, config.max_connections_per_ip);
    let header_timeout = Duration::from_millis(config.header_read_timeout_ms);
    let connections = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match slots.take(remote.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                metrics.refused(reason);
                tracing::debug!(%remote, reason, "http connection refused");
                drop(stream);
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "http connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_capped_in_total_and_per_address() {
        let slots = Slots::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), "per_ip");
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), "busy");
        drop(a1);
        let _b2 = slots.take(b).unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(slots.take(mapped).unwrap_err(), "busy");
    }
}
