//! Malformed input from the network is refused by the decoders, counted, and never panics
//! the node: a raw libp2p client sends garbage content requests, and a peer answers with more
//! bytes than our limit allows.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use zerostate::p2p::CONTENT_PROTOCOL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_content_requests_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let target = p2p_addr(&node);

    let mut client = raw_swarm(|_| {
        request_response::Behaviour::with_codec(
            RawCodec,
            [(CONTENT_PROTOCOL, ProtocolSupport::Outbound)],
            request_response::Config::default(),
        )
    });
    client.dial(target).unwrap();
    let peer = node.peer_id();
    // Not a CID, and far over the 64-byte request limit.
    let garbage = [vec![0xff; 10], vec![0x01; 1000]];
    let mut pending = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, client.select_next_some())
            .await
            .expect("client events");
        match event {
            SwarmEvent::ConnectionEstablished { .. } if pending == 0 => {
                for g in &garbage {
                    client.behaviour_mut().send_request(&peer, g.clone());
                    pending += 1;
                }
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                pending -= 1;
            }
            // The node drops the stream: our raw codec reads that as an empty answer.
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => {
                assert!(
                    response.is_empty(),
                    "the node must not answer a malformed request"
                );
                pending -= 1;
            }
            _ => {}
        }
        if pending == 0 && client.network_info().num_peers() > 0 {
            break;
        }
    }

    let series = r#"zerostate_p2p_malformed_messages_total{protocol="content"}"#;
    eventually(
        Duration::from_secs(10),
        "malformed requests counted",
        || async { (metric_value(&scrape(&node).await, series) == Some(2.0)).then_some(()) },
    )
    .await;
    assert_eq!(get(&node, "/health").await.0, 200, "the node is still up");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_our_size_limit_is_refused_and_counted() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |_| {}).await;
    let (big, small) = (&nodes[0], &nodes[1]);
    // The provider holds an object larger than the requester accepts: start the requester
    // again with a smaller limit.
    let data = vec![3u8; 300 * 1024];
    let id = big.content().put(data.into()).await.unwrap();
    let small_id = small.peer_id();
    let small_dir = dirs[1].path().to_owned();
    let nodes_iter: Vec<_> = nodes.into_iter().collect();
    let mut it = nodes_iter.into_iter();
    let big = it.next().unwrap();
    it.next().unwrap().shutdown().await;
    let mut config = test_config(&small_dir, vec![p2p_addr(&big)]);
    config.content.max_object_bytes = 256 * 1024;
    let small = start(config).await;
    assert_eq!(small.peer_id(), small_id);
    eventually(Duration::from_secs(30), "reconnected", || async {
        (!small.p2p().connected_peers().await.ok()?.is_empty()).then_some(())
    })
    .await;

    let url = format!("http://{}/api/v1/content/{id}", small.http_addr());
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(small.api_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let text = scrape(&small).await;
    assert_eq!(
        metric_value(
            &text,
            r#"zerostate_p2p_content_provider_failures_total{reason="malformed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(metric_value(&text, "zerostate_cache_entries"), Some(0.0));
    big.shutdown().await;
    small.shutdown().await;
}
