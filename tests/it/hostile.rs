//! Hostile peers, played by raw libp2p swarms against real nodes: a provider that lies,
//! providers that never answer, a peer that floods identify pushes with new addresses and
//! address shapes, a peer that keeps gossiping invalid messages, and an address that holds
//! idle sockets open. Each test asserts what a user of the node cares about.

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, noise, tcp, yamux};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use zerostate::content_id::ContentId;
use zerostate::p2p::{
    CONTENT_PROTOCOL, ContentCodec, ContentResponse, KAD_PROTOCOL, PROTOCOL_VERSION, Payload,
};

use crate::common::*;
use crate::content::{fetch, put, random_bytes};

/// How a hostile peer answers content requests.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Sends bytes that do not match the id.
    Lie,
    /// Accepts the request and never answers.
    Silent,
    /// Does not hold anything.
    Empty,
}

const PUSH_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/id/push/1.0.0");

#[derive(NetworkBehaviour)]
struct Hostile {
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    content: request_response::Behaviour<ContentCodec>,
    push: request_response::Behaviour<RawCodec>,
    gossipsub: gossipsub::Behaviour,
}

enum Cmd {
    Push(Vec<u8>),
    Publish(Vec<u8>),
    Provide(ContentId),
}

/// A raw swarm connected to one node, driven by its own task.
struct RawPeer {
    id: PeerId,
    cmds: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawPeer {
    /// Starts a hostile peer that dials `target` (a node's address with `/p2p/`).
    async fn spawn(target: Multiaddr, mode: Mode) -> Self {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                let mut kad = kad::Behaviour::with_config(
                    id,
                    MemoryStore::new(id),
                    kad::Config::new(KAD_PROTOCOL),
                );
                kad.set_mode(Some(kad::Mode::Server));
                let gossipsub = gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossipsub::ConfigBuilder::default()
                        .heartbeat_interval(Duration::from_millis(200))
                        .build()
                        .unwrap(),
                )
                .unwrap();
                Hostile {
                    identify: identify::Behaviour::new(identify::Config::new(
                        PROTOCOL_VERSION.into(),
                        key.public(),
                    )),
                    kad,
                    content: request_response::Behaviour::with_codec(
                        ContentCodec::new(8 << 20, 64 << 20, Counter::default()),
                        [(CONTENT_PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(60)),
                    ),
                    push: request_response::Behaviour::with_codec(
                        RawCodec,
                        [(PUSH_PROTOCOL, ProtocolSupport::Outbound)],
                        request_response::Config::default(),
                    ),
                    gossipsub,
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let node = match target.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(id)) => id,
            _ => panic!("{target} has no peer id"),
        };
        swarm.behaviour_mut().kad.add_address(&node, target.clone());
        for topic in zerostate::p2p::TOPICS {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(*topic))
                .unwrap();
        }
        // From a fresh port, as the node dials: a dial from the listen port can collide with
        // an earlier connection's TIME_WAIT between the same two ports.
        swarm
            .dial(
                libp2p::swarm::dial_opts::DialOpts::peer_id(node)
                    .addresses(vec![target])
                    .allocate_new_port()
                    .build(),
            )
            .unwrap();
        let id = *swarm.local_peer_id();
        let (cmds, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            let mut held: Vec<ResponseChannel<ContentResponse>> = Vec::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Cmd::Push(bytes)) => {
                            swarm.behaviour_mut().push.send_request(&node, bytes);
                        }
                        Some(Cmd::Publish(data)) => {
                            let topic = IdentTopic::new(zerostate::p2p::TOPICS[0]);
                            let _ = swarm.behaviour_mut().gossipsub.publish(topic, data);
                        }
                        Some(Cmd::Provide(id)) => {
                            let key = kad::RecordKey::new(&id.digest());
                            swarm.behaviour_mut().kad.start_providing(key).unwrap();
                        }
                        None => return,
                    },
                    event = swarm.select_next_some() => {
                        match &event {
                            SwarmEvent::OutgoingConnectionError { error, .. } => {
                                eprintln!("raw peer {id}: dial failed: {error}");
                            }
                            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                                eprintln!("raw peer {id}: connection to {peer_id} closed: {cause:?}");
                            }
                            _ => {}
                        }
                        if let SwarmEvent::Behaviour(HostileEvent::Content(
                            request_response::Event::Message {
                                message: request_response::Message::Request { request, channel, .. },
                                ..
                            },
                        )) = event
                        {
                            match mode {
                                Mode::Lie => {
                                    let mut bad = request.0.to_bytes().to_vec();
                                    bad.extend_from_slice(b" is what you asked for");
                                    let _ = swarm.behaviour_mut().content.send_response(
                                        channel,
                                        ContentResponse::Found(Payload::new(bad.into())),
                                    );
                                }
                                Mode::Silent => held.push(channel),
                                Mode::Empty => {
                                    let _ = swarm
                                        .behaviour_mut()
                                        .content
                                        .send_response(channel, ContentResponse::NotFound);
                                }
                            }
                        }
                    }
                }
            }
        });
        Self { id, cmds, task }
    }

    async fn send(&self, cmd: Cmd) {
        self.cmds.send(cmd).await.unwrap();
    }
}

/// Waits until `node` lists `peer` as connected.
async fn connected(node: &zerostate::NodeHandle, peer: PeerId) {
    eventually(Duration::from_secs(30), "the raw peer connects", || async {
        node.p2p()
            .connected_peers()
            .await
            .ok()?
            .contains(&peer)
            .then_some(())
    })
    .await;
}

/// The `/api/v1/peers` entry of `peer`.
async fn peer_info(node: &zerostate::NodeHandle, peer: PeerId) -> Option<serde_json::Value> {
    let (_, body) = get(node, "/api/v1/peers").await;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer.to_string())
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_provider_is_caught_penalised_and_asked_last() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |_| {}).await;
    let (honest, c) = (&nodes[0], &nodes[1]);
    let liar = RawPeer::spawn(p2p_addr(c), Mode::Lie).await;
    connected(c, liar.id).await;

    // Only the liar could have Z: C returns nothing rather than wrong bytes (502).
    let z_id = ContentId::of(b"only the liar claims to have this").to_string();
    let (status, body) = fetch(c, &z_id).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("do not match"));
    let text = scrape(c).await;
    assert_eq!(
        metric_value(
            &text,
            r#"zerostate_p2p_content_provider_failures_total{reason="mismatch"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "zerostate_cache_verification_failures_total"),
        Some(1.0)
    );
    assert_eq!(metric_value(&text, "zerostate_cache_entries"), Some(0.0));
    assert_eq!(
        c.content().mismatches(&liar.id),
        1,
        "the liar was penalised"
    );
    assert_eq!(c.content().mismatches(&honest.peer_id()), 0);

    // The honest node holds X; the liar claims everything. C gets the right bytes, and
    // asks the liar last from now on, so it is not asked again while the honest one serves.
    for _ in 0..3 {
        let x = random_bytes(32 * 1024);
        let x_id = put(honest, &x).await;
        assert_eq!(fetch(c, &x_id).await, (200, x));
    }
    assert_eq!(c.content().mismatches(&liar.id), 1, "not asked again");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_providers_cannot_stall_a_fetch() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |_| {}).await;
    let (honest, c) = (&nodes[0], &nodes[1]);
    // Ten objects on the honest node.
    let mut objects = Vec::new();
    for _ in 0..10 {
        let data = random_bytes(16 * 1024);
        let id = put(honest, &data).await;
        objects.push((id, data));
    }
    // Eight peers that accept every content request and never answer, and announce
    // themselves as providers of every object.
    let mut silent = Vec::new();
    for _ in 0..8 {
        let peer = RawPeer::spawn(p2p_addr(c), Mode::Silent).await;
        connected(c, peer.id).await;
        for (id, _) in &objects {
            peer.send(Cmd::Provide(id.parse().unwrap())).await;
        }
        silent.push(peer);
    }
    let first: ContentId = objects[0].0.parse().unwrap();
    eventually(
        Duration::from_secs(30),
        "the silent peers' provider records reach C",
        || async {
            let providers = c.p2p().find_providers(first).await.ok()?;
            let n = silent.iter().filter(|p| providers.contains(&p.id)).count();
            (n == silent.len()).then_some(())
        },
    )
    .await;

    // Every object arrives, within the fetch budget (a 404 would mean it ran out).
    for (id, data) in &objects {
        let (status, got) = fetch(c, id).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
        assert_eq!(&got, data);
    }
    drop(silent);
    for n in nodes {
        n.shutdown().await;
    }
}

/// An identify push message (length-prefixed protobuf) with these listen addresses and this
/// observed address, as a hostile peer may write it.
fn identify_push(listen: &[Multiaddr], observed: &Multiaddr) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag);
        let mut len = unsigned_varint::encode::usize_buffer();
        out.extend_from_slice(unsigned_varint::encode::usize(bytes.len(), &mut len));
        out.extend_from_slice(bytes);
    }
    let mut body = Vec::new();
    for addr in listen {
        field(&mut body, 0x12, &addr.to_vec());
    }
    field(&mut body, 0x22, &observed.to_vec());
    let mut msg = Vec::new();
    let mut len = unsigned_varint::encode::usize_buffer();
    msg.extend_from_slice(unsigned_varint::encode::usize(body.len(), &mut len));
    msg.extend_from_slice(&body);
    msg
}

/// Distinct label sets of the series of `family` in an exposition.
fn series(text: &str, family: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_push_spam_neither_grows_the_routing_table_nor_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let spammer = RawPeer::spawn(p2p_addr(&node), Mode::Empty).await;
    connected(&node, spammer.id).await;
    eventually(
        Duration::from_secs(30),
        "the spammer enters the routing table",
        || async {
            peer_info(&node, spammer.id).await?["dht_addresses"]
                .as_u64()
                .map(|_| ())
        },
    )
    .await;
    let families = [
        "zerostate_libp2p_identify_remote_listen_addresses",
        "zerostate_libp2p_identify_local_observed_addresses",
        "zerostate_libp2p_swarm_external_addr_candidates_total",
    ];
    let before = scrape(&node).await;
    let received =
        |t: &str| metric_value(t, "zerostate_libp2p_identify_received_total").unwrap_or(0.0);
    let received_before = received(&before);

    const PUSHES: u32 = 40;
    for i in 0..PUSHES {
        // Five new dialable addresses per push, plus new address shapes: a stack of `ws`
        // components one longer each time, as listen and as observed address.
        let mut listen: Vec<Multiaddr> = (0..5)
            .map(|j| {
                format!("/ip4/10.{}.{}.{j}/tcp/4001", i / 200, i % 200)
                    .parse()
                    .unwrap()
            })
            .collect();
        let exotic: Multiaddr = format!("/ip4/1.2.3.4/tcp/1{}", "/ws".repeat(i as usize + 1))
            .parse()
            .unwrap();
        listen.push(exotic.clone());
        spammer
            .send(Cmd::Push(identify_push(&listen, &exotic)))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(
        Duration::from_secs(30),
        "the node took every push",
        || async {
            let text = scrape(&node).await;
            (received(&text) >= received_before + f64::from(PUSHES)).then_some(())
        },
    )
    .await;

    // The routing table holds at most 8 addresses of the spammer, however many it pushed.
    let info = peer_info(&node, spammer.id).await.expect("still monitored");
    let in_table = info["dht_addresses"]
        .as_u64()
        .expect("in the routing table");
    assert!(
        in_table <= 8,
        "{in_table} addresses of one peer in the routing table"
    );
    let after = scrape(&node).await;
    let evicted = metric_value(
        &after,
        r#"zerostate_p2p_peer_addresses_dropped_total{reason="evicted"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        evicted >= f64::from(PUSHES * 5 - 8),
        "oldest addresses replaced: {evicted}"
    );
    // No new address shape became a series.
    for family in families {
        let new: Vec<_> = series(&after, family)
            .difference(&series(&before, family))
            .filter(|s| s.contains("/ws"))
            .cloned()
            .collect();
        assert!(new.is_empty(), "{family} grew: {new:?}");
    }
    let exotic_series = after.lines().filter(|l| l.contains("/ws")).count();
    assert_eq!(exotic_series, 0, "no series names a peer-chosen stack");
    drop(spammer);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_sending_invalid_gossip_is_graylisted() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let spammer = RawPeer::spawn(p2p_addr(&node), Mode::Empty).await;
    connected(&node, spammer.id).await;
    let rejected =
        r#"zerostate_p2p_gossip_messages_total{topic="/zerostate/auctions/1",verdict="rejected"}"#;
    // A steady trickle of messages that are not announcements.
    let mut sent = 0u32;
    let score = eventually(Duration::from_secs(60), "the spammer is graylisted", || {
        sent += 1;
        let data = format!("invalid message {sent}").into_bytes();
        let spammer = &spammer;
        let node = &node;
        async move {
            spammer.send(Cmd::Publish(data)).await;
            let score = peer_info(node, spammer.id).await?["gossip_score"].as_f64()?;
            // Graylisted means strictly below -80; invalid-message counts decay (×0.9 a
            // second), so wait for a margin that outlasts the next few messages.
            (score <= -100.0).then_some(score)
        }
    })
    .await;
    assert!(score < -80.0, "{score}");
    let text = scrape(&node).await;
    let counted = metric_value(&text, rejected).unwrap_or(0.0);
    assert!(
        counted >= 3.0,
        "invalid messages were rejected and counted: {counted}"
    );
    // Graylisted: what it sends now is not even looked at.
    for i in 0..5 {
        spammer
            .send(Cmd::Publish(format!("ignored {i}").into_bytes()))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = metric_value(&scrape(&node).await, rejected).unwrap_or(0.0);
    assert!(
        later <= counted + 1.0,
        "graylisted messages are dropped unread: {counted} -> {later}"
    );
    drop(spammer);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_do_not_keep_other_peers_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    // Long enough that the flood's sockets hold their slots for the whole test.
    config.limits.handshake_timeout_ms = 60_000;
    let node = start(config).await;
    let target = node.p2p().status().listen_addrs[0].clone();
    let port = match target.iter().nth(1) {
        Some(libp2p::multiaddr::Protocol::Tcp(port)) => port,
        _ => panic!("{target}"),
    };
    // 64 sockets from 127.0.0.2 that never start the handshake: more than the pending limit.
    let mut flood = Vec::new();
    for _ in 0..64 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(([127, 0, 0, 1], port).into()).await {
            flood.push(stream);
        }
    }
    // Fresh peers from 127.0.0.1 still get in while the flood holds its sockets.
    let mut peers = Vec::new();
    for _ in 0..4 {
        let peer = RawPeer::spawn(p2p_addr(&node), Mode::Empty).await;
        connected(&node, peer.id).await;
        peers.push(peer);
    }
    assert_eq!(
        flood.len(),
        64,
        "the flood's sockets were accepted by the kernel"
    );
    // Because the flood was refused beyond its share of the pending slots.
    let text = scrape(&node).await;
    let refused = metric_value(
        &text,
        r#"zerostate_p2p_connections_refused_total{reason="pending_per_ip"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        refused >= 1.0,
        "the flood was refused beyond its share: {refused}"
    );
    drop(flood);
    drop(peers);
    node.shutdown().await;
}
