//! Multi-node tests: real swarms on 127.0.0.1, discovery through one bootstrap peer.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_find_each_other_through_one_bootstrap_peer() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = start(test_config(dirs[0].path(), vec![])).await;
    let bootstrap = p2p_addr(&first);
    let mut nodes = vec![first];
    for dir in &dirs[1..] {
        nodes.push(start(test_config(dir.path(), vec![bootstrap.clone()])).await);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id().to_string()).collect();

    // Every node ends up connected to at least 3 others.
    for (i, node) in nodes.iter().enumerate() {
        eventually(
            Duration::from_secs(60),
            &format!("node {i} has 3 peers"),
            || async {
                let peers = node.p2p().peers().await.ok()?;
                (peers.len() >= 3).then_some(())
            },
        )
        .await;
    }

    // Nodes 2..5 were told only about node 1: their other connections came from Kademlia.
    for node in &nodes[1..] {
        let peers = node.p2p().peers().await.unwrap();
        let others: HashSet<_> = peers
            .iter()
            .filter(|p| p.connected)
            .map(|p| p.peer_id.clone())
            .filter(|p| *p != ids[0])
            .collect();
        assert!(
            others.len() >= 2,
            "only the bootstrap peer is known: {peers:?}"
        );
        // The API shows the addresses of each connected peer.
        assert!(
            peers
                .iter()
                .filter(|p| p.connected)
                .all(|p| !p.addresses.is_empty())
        );
    }
    for node in &nodes {
        eventually(
            Duration::from_secs(20),
            "identify and ping recorded per peer",
            || async {
                let peers = node.p2p().peers().await.ok()?;
                peers
                    .iter()
                    .all(|p| {
                        p.protocols.iter().any(|x| x == "/zerostate/kad/1.0.0")
                            && p.agent_version.as_deref()
                                == Some(concat!("zerostate/", env!("CARGO_PKG_VERSION")))
                            && p.rtt_last_ms.is_some()
                    })
                    .then_some(())
            },
        )
        .await;
    }

    // Every node's /metrics shows connections, and identify and ping metrics that move.
    let mut before = Vec::new();
    for node in &nodes {
        let (status, text) = get(node, "/metrics").await;
        assert_eq!(status, 200);
        let established = metric_sum(
            &text,
            "zerostate_libp2p_swarm_connections_established_total",
        )
        .unwrap();
        assert!(established >= 3.0, "established connections: {established}");
        let pool = metric_value(&text, "zerostate_p2p_connection_pool_size").unwrap();
        assert!(pool >= 3.0, "pool size {pool}");
        let received = metric_sum(&text, "zerostate_libp2p_identify_received_total").unwrap();
        assert!(received >= 3.0, "identify received: {received}");
        before.push(metric_sum(&text, "zerostate_libp2p_ping_rtt_seconds_count").unwrap());
    }
    for (node, before) in nodes.iter().zip(before) {
        eventually(Duration::from_secs(20), "ping count grows", || async {
            let (_, text) = get(node, "/metrics").await;
            let now = metric_sum(&text, "zerostate_libp2p_ping_rtt_seconds_count")?;
            (now > before).then_some(())
        })
        .await;
    }

    // A gossip message on one of our topics is validated (and counted) by the others. No
    // service defines a format for the topic yet, so it is rejected.
    eventually(
        Duration::from_secs(20),
        "publish finds mesh peers",
        || async {
            nodes[0]
                .p2p()
                .publish("/zerostate/auctions/1", b"not yet a valid auction".to_vec())
                .await
                .ok()
        },
    )
    .await;
    let series =
        r#"zerostate_p2p_gossip_messages_total{topic="/zerostate/auctions/1",verdict="rejected"}"#;
    eventually(
        Duration::from_secs(20),
        "a peer validates the gossip message",
        || async {
            for node in &nodes[1..] {
                let (_, text) = get(node, "/metrics").await;
                if metric_value(&text, series).unwrap_or(0.0) >= 1.0 {
                    return Some(());
                }
            }
            None
        },
    )
    .await;

    let (_, text) = get(&nodes[1], "/metrics").await;
    let dials = metric_value(
        &text,
        r#"zerostate_p2p_bootstrap_dials_total{outcome="connected"}"#,
    );
    assert!(
        dials.is_some_and(|d| d >= 1.0),
        "node 2's connection to its bootstrap peer is counted: {dials:?}"
    );

    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn restarted_node_keeps_its_peer_id_and_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let id = node.peer_id();
    node.shutdown().await;
    let node = start(test_config(dir.path(), vec![])).await;
    assert_eq!(node.peer_id(), id);
    // A second node on the same data dir (the same identity) is refused while this one runs.
    let err = zerostate::start(test_config(dir.path(), vec![]))
        .await
        .err()
        .expect("second node on one data dir is refused");
    assert!(err.to_string().contains("in use"), "{err}");
    for file in ["identity.key", "api-token"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unblocked_bootstrap_peer_is_redialed() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // B blocks its bootstrap peer (dropping the connection), then unblocks it: B's redial
    // with backoff brings the connection back.
    assert!(b.p2p().block(a.peer_id()).await.unwrap());
    eventually(Duration::from_secs(20), "B dropped A", || async {
        (!b.p2p().connected_peers().await.ok()?.contains(&a.peer_id())).then_some(())
    })
    .await;
    assert!(b.p2p().unblock(a.peer_id()).await.unwrap());
    eventually(Duration::from_secs(30), "B reconnects to A", || async {
        b.p2p()
            .connected_peers()
            .await
            .ok()?
            .contains(&a.peer_id())
            .then_some(())
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}
