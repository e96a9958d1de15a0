//! The node's health, and the supervision of the tasks it depends on.
//!
//! A task that must run for the node to be useful (the swarm's event loop, the services) is
//! started with [`supervise`]: if it ends before shutdown was asked for, or panics, the
//! [`Health`] turns failed with the reason. `/health` then answers 503, and the binary exits
//! non-zero, so a supervisor (systemd, Docker, Kubernetes) restarts the node.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Shared health state: healthy until the first failure, which sticks.
#[derive(Debug, Clone)]
pub struct Health {
    failure: watch::Sender<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            failure: watch::channel(None).0,
        }
    }
}

impl Health {
    /// Marks the node failed (the first reason is kept).
    pub fn fail(&self, reason: String) {
        self.failure.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the node failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Resolves with the reason once the node has failed.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in `self`, so the channel cannot close while we wait.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Whether the node is ready to serve: listening on a p2p address and, when bootstrap peers
/// are configured, connected to a peer. `Err` says what is missing. `GET /ready` answers with
/// it, and `zerostate_node_ready` follows it.
pub fn readiness(
    listening: bool,
    connected_peers: usize,
    bootstrap_configured: bool,
) -> Result<(), &'static str> {
    if !listening {
        Err("not listening on any p2p address yet")
    } else if bootstrap_configured && connected_peers == 0 {
        Err("bootstrap peers are configured but no peer is connected yet")
    } else {
        Ok(())
    }
}

/// Runs `task` (named `name`) on its own tokio task and watches it: if it returns before
/// `cancel` fires, or panics, `health` fails and `cancel` fires so the rest of the node stops.
pub async fn supervise<F>(name: &'static str, task: F, health: Health, cancel: CancellationToken)
where
    F: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(task).await;
    if cancel.is_cancelled() {
        return;
    }
    let reason = match outcome {
        Ok(()) => format!("{name} stopped unexpectedly"),
        Err(e) if e.is_panic() => format!("{name} panicked: {}", panic_message(e.into_panic())),
        Err(e) => format!("{name} was cancelled: {e}"),
    };
    tracing::error!(task = name, %reason, "a vital task ended; the node is unhealthy and stops");
    health.fail(reason);
    cancel.cancel();
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fails_the_node_and_stops_the_rest() {
        let health = Health::default();
        let cancel = CancellationToken::new();
        supervise(
            "event loop",
            async { panic!("boom") },
            health.clone(),
            cancel.clone(),
        )
        .await;
        let reason = health.failure().expect("failed");
        assert!(reason.contains("event loop panicked: boom"), "{reason}");
        assert!(cancel.is_cancelled());
        assert_eq!(health.failed().await, reason);
    }

    #[tokio::test]
    async fn a_task_that_returns_early_fails_the_node() {
        let health = Health::default();
        let cancel = CancellationToken::new();
        supervise("content service", async {}, health.clone(), cancel.clone()).await;
        assert_eq!(
            health.failure().as_deref(),
            Some("content service stopped unexpectedly")
        );
    }

    #[tokio::test]
    async fn a_task_that_stops_on_shutdown_is_healthy() {
        let health = Health::default();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = supervise(
            "event loop",
            async move { c.cancelled().await },
            health.clone(),
            cancel.clone(),
        );
        cancel.cancel();
        task.await;
        assert_eq!(health.failure(), None);
    }
}
