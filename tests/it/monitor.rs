//! Peer monitor on real nodes: a stopped peer goes suspect, then dead, then is dropped, within
//! the configured thresholds, and the metrics show each step.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_goes_suspect_then_dead_then_is_dropped() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| {
        c.monitor.ping_interval_ms = 200;
        c.monitor.suspect_after_ms = 1_000;
        c.monitor.dead_after_ms = 2_000;
        c.monitor.expire_after_ms = 3_000;
    })
    .await;
    let mut nodes = nodes.into_iter();
    let watcher = nodes.next().unwrap();
    let stopped = nodes.next().unwrap();
    let other = nodes.next().unwrap();
    let stopped_id = stopped.peer_id().to_string();

    // All alive, with RTTs recorded and no peer label anywhere.
    eventually(
        Duration::from_secs(20),
        "both peers alive with an RTT",
        || async {
            let peers = watcher.p2p().peers().await.ok()?;
            (peers.len() == 2
                && peers.iter().all(|p| {
                    p.rtt_ewma_ms.is_some() && p.state == zerostate::p2p::PeerState::Alive
                }))
            .then_some(())
        },
    )
    .await;
    let text = scrape(&watcher).await;
    assert_eq!(
        metric_value(&text, r#"zerostate_p2p_peers{state="alive"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&text, "zerostate_p2p_active_peer_monitors"),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&text, "zerostate_p2p_connection_pool_size"),
        Some(2.0)
    );
    assert!(metric_sum(&text, "zerostate_p2p_peer_rtt_seconds_count").unwrap() >= 2.0);
    assert!(
        !text.contains(&stopped_id),
        "no metric is labelled by peer id"
    );

    stopped.shutdown().await;

    // Watch the API and the metrics until the peer is gone, recording each step.
    let mut seen_api = Vec::new();
    let mut seen_metrics = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stopped peer was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = scrape(&watcher).await;
        for state in ["suspect", "dead"] {
            let series = format!("zerostate_p2p_peers{{state=\"{state}\"}}");
            if metric_value(&text, &series) == Some(1.0) && seen_metrics.last() != Some(&state) {
                seen_metrics.push(state);
            }
        }
        let peers = watcher.p2p().peers().await.unwrap();
        match peers.iter().find(|p| p.peer_id == stopped_id) {
            Some(p) => {
                assert!(!p.connected);
                let state = serde_json::to_value(p.state).unwrap();
                let state = state.as_str().unwrap().to_owned();
                // Each state follows from the configured thresholds and how long the peer has
                // been unseen, as the node itself reports it.
                match state.as_str() {
                    "suspect" => assert!(p.last_seen_secs_ago >= 1.0, "{p:?}"),
                    "dead" => assert!(p.last_seen_secs_ago >= 2.0, "{p:?}"),
                    _ => assert!(p.last_seen_secs_ago < 2.0, "{p:?}"),
                }
                if seen_api.last() != Some(&state) {
                    seen_api.push(state);
                }
            }
            None => {
                let active = metric_value(&text, "zerostate_p2p_active_peer_monitors");
                if active == Some(1.0) {
                    break;
                }
            }
        }
    }
    // The first poll may already find it suspect; after that, every step in order.
    let seen_api: Vec<&str> = seen_api
        .iter()
        .map(String::as_str)
        .skip_while(|s| *s == "alive")
        .collect();
    assert_eq!(seen_api, ["suspect", "dead"], "API steps");
    assert_eq!(seen_metrics, ["suspect", "dead"], "metric steps");
    let text = scrape(&watcher).await;
    assert_eq!(
        metric_value(&text, "zerostate_p2p_connection_pool_size"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, r#"zerostate_p2p_peers{state="dead"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, r#"zerostate_p2p_peers{state="alive"}"#),
        Some(1.0)
    );

    watcher.shutdown().await;
    other.shutdown().await;
}
