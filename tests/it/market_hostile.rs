//! Hostile market peers, played by raw libp2p swarms that speak the market's wire format
//! by hand: a requester that understates a second price, and a table of forged and malformed
//! announcements, bids, awards and results. Each is refused with its own counted reason,
//! changes no state, is not forwarded, and the node stays healthy.

use std::time::Duration;

use futures::StreamExt;
use libp2p::core::SignedEnvelope;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use zerostate::NodeHandle;
use zerostate::market::wire::{
    self, AUCTIONS_TOPIC, Announcement, AuctionId, AuctionType, Award, Bid, DOMAIN, RESULTS_TOPIC,
    Request, Signed, TaskSpec, WireMessage, now_ms, open, pb, sign,
};
use zerostate::p2p::{CHANNEL_PROTOCOL, MARKET_PROTOCOL};
use zerostate::payments::channel::{Channel, Op};
use zerostate::payments::wire::{self as channel_wire, ChannelId, EscrowId};

use crate::common::*;
use crate::market::{market_config, pow, sum_where};

#[derive(NetworkBehaviour)]
pub(crate) struct RawMarketBehaviour {
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) market: request_response::Behaviour<RawCodec>,
    pub(crate) channel: request_response::Behaviour<RawCodec>,
}

/// A raw swarm with a new identity (`key`) that speaks gossipsub (subscribed to every market
/// topic) and the market and channel protocols, dialing each of `targets`: the peer every
/// hostile market test plays.
pub(crate) fn market_swarm(
    key: &Keypair,
    targets: &[&NodeHandle],
) -> libp2p::Swarm<RawMarketBehaviour> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| RawMarketBehaviour {
            gossipsub: gossipsub::Behaviour::new(
                MessageAuthenticity::Signed(key.clone()),
                gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(200))
                    .max_transmit_size(64 * 1024)
                    .build()
                    .unwrap(),
            )
            .unwrap(),
            market: request_response::Behaviour::with_codec(
                RawCodec,
                [(MARKET_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            ),
            channel: request_response::Behaviour::with_codec(
                RawCodec,
                [(CHANNEL_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for topic in zerostate::p2p::TOPICS {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(*topic))
            .unwrap();
    }
    for node in targets {
        let addr: Multiaddr = node.p2p().status().listen_addrs[0].clone();
        swarm
            .dial(
                libp2p::swarm::dial_opts::DialOpts::peer_id(node.peer_id())
                    .addresses(vec![addr])
                    .allocate_new_port()
                    .build(),
            )
            .unwrap();
    }
    swarm
}

enum Cmd {
    Publish(&'static str, Vec<u8>),
    Request(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
    ChannelRequest(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
}

/// A raw swarm that speaks the market and channel protocols by hand. Inbound market requests
/// are answered "accepted" and handed to the test; inbound channel states are countersigned
/// as they come; gossip it receives is handed over too.
pub(crate) struct RawMarket {
    pub(crate) key: Keypair,
    pub(crate) id: PeerId,
    cmds: mpsc::Sender<Cmd>,
    pub(crate) requests: mpsc::Receiver<(PeerId, Vec<u8>)>,
    pub(crate) gossip: mpsc::Receiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawMarket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawMarket {
    pub(crate) async fn spawn(targets: &[&NodeHandle]) -> Self {
        Self::spawn_with(targets, false).await
    }

    /// Like [`RawMarket::spawn`]; with `refuse_awards`, every award is answered `not_winner`.
    async fn spawn_with(targets: &[&NodeHandle], refuse_awards: bool) -> Self {
        let key = Keypair::generate_ed25519();
        let mut swarm = crate::market_hostile::market_swarm(&key, targets);
        let id = *swarm.local_peer_id();
        let (cmds, mut rx) = mpsc::channel(64);
        let (req_tx, requests) = mpsc::channel(256);
        let (gossip_tx, gossip) = mpsc::channel(256);
        let signer = key.clone();
        let task = tokio::spawn(async move {
            let mut pending = std::collections::HashMap::new();
            let mut channel_pending = std::collections::HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Cmd::Publish(topic, data)) => {
                            let _ = swarm.behaviour_mut().gossipsub.publish(IdentTopic::new(topic), data);
                        }
                        Some(Cmd::Request(peer, bytes, reply)) => {
                            let id = swarm.behaviour_mut().market.send_request(&peer, bytes);
                            pending.insert(id, reply);
                        }
                        Some(Cmd::ChannelRequest(peer, bytes, reply)) => {
                            let id = swarm.behaviour_mut().channel.send_request(&peer, bytes);
                            channel_pending.insert(id, reply);
                        }
                        None => return,
                    },
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(RawMarketBehaviourEvent::Market(e)) => match e {
                            request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                                // An award is refused as if the bid had lapsed when asked to.
                                let answer = match Request::decode(&request) {
                                    Ok(Request::Award(_)) if refuse_awards => Err(wire::Refusal::NotWinner),
                                    _ => Ok(()),
                                };
                                let _ = swarm.behaviour_mut().market.send_response(channel, wire::encode_response(answer));
                                let _ = req_tx.try_send((peer, request));
                            }
                            request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. } => {
                                if let Some(reply) = pending.remove(&request_id) {
                                    let _ = reply.send(Ok(response));
                                }
                            }
                            request_response::Event::OutboundFailure { request_id, error, .. } => {
                                if let Some(reply) = pending.remove(&request_id) {
                                    let _ = reply.send(Err(error.to_string()));
                                }
                            }
                            _ => {}
                        },
                        SwarmEvent::Behaviour(RawMarketBehaviourEvent::Channel(e)) => match e {
                            request_response::Event::Message { message: request_response::Message::Request { request, channel, .. }, .. } => {
                                // Countersigns whatever state it is offered (a lenient payee).
                                let answer = match channel_wire::Request::decode(&request) {
                                    Ok(channel_wire::Request::Open(p) | channel_wire::Request::Update(p)) => {
                                        channel_wire::Response::Countersig(channel_wire::sign_state(&signer, &p.bytes))
                                    }
                                    Ok(channel_wire::Request::Close(_)) => channel_wire::Response::CloseAccepted,
                                    Err(e) => channel_wire::Response::Refused(e.label().into()),
                                };
                                let _ = swarm.behaviour_mut().channel.send_response(channel, answer.encode(0));
                            }
                            request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. } => {
                                if let Some(reply) = channel_pending.remove(&request_id) {
                                    let _ = reply.send(Ok(response));
                                }
                            }
                            request_response::Event::OutboundFailure { request_id, error, .. } => {
                                if let Some(reply) = channel_pending.remove(&request_id) {
                                    let _ = reply.send(Err(error.to_string()));
                                }
                            }
                            _ => {}
                        },
                        SwarmEvent::Behaviour(RawMarketBehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                            let _ = gossip_tx.try_send((message.topic.into_string(), message.data));
                        }
                        _ => {}
                    },
                }
            }
        });
        let me = Self {
            key,
            id,
            cmds,
            requests,
            gossip,
            task,
        };
        for node in targets {
            eventually(Duration::from_secs(30), "the raw peer connects", || async {
                node.p2p()
                    .connected_peers()
                    .await
                    .ok()?
                    .contains(&me.id)
                    .then_some(())
            })
            .await;
        }
        me
    }

    pub(crate) async fn publish(&self, topic: &'static str, data: Vec<u8>) {
        self.cmds.send(Cmd::Publish(topic, data)).await.unwrap();
    }

    /// Sends a raw channel frame; returns the node's decoded answer and highest number.
    pub(crate) async fn channel_request(
        &self,
        peer: PeerId,
        request: &channel_wire::Request,
    ) -> Result<(channel_wire::Response, u64), String> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::ChannelRequest(peer, request.encode(), tx))
            .await
            .unwrap();
        let bytes = rx.await.unwrap()?;
        channel_wire::Response::decode(&bytes).map_err(|e| e.to_string())
    }

    /// Opens a channel to `peer` with `deposit`, by the rules.
    pub(crate) async fn open_channel(&self, peer: PeerId, deposit: u64) -> Channel {
        let (mut channel, proposal) =
            Channel::open(&self.key, peer, ChannelId::random(), deposit, 0, now_ms()).unwrap();
        let answer = self
            .channel_request(peer, &channel_wire::Request::Open(proposal))
            .await
            .unwrap();
        let channel_wire::Response::Countersig(sig) = answer.0 else {
            panic!("the node refused to open: {answer:?}");
        };
        channel.countersigned(&sig, now_ms()).unwrap();
        channel
    }

    /// Proposes `op` in `channel`, by the rules; returns the node's answer.
    pub(crate) async fn propose(&self, channel: &mut Channel, op: &Op) -> channel_wire::Response {
        let proposal = channel.propose(&self.key, op, now_ms()).unwrap();
        let (answer, highest) = self
            .channel_request(channel.peer(), &channel_wire::Request::Update(proposal))
            .await
            .unwrap();
        match &answer {
            channel_wire::Response::Countersig(sig) => {
                channel.countersigned(sig, now_ms()).unwrap();
            }
            _ => {
                channel.refused(highest, now_ms());
            }
        }
        answer
    }

    /// Locks `amount` for `peer` under `escrow` for `ttl_ms`, in a new channel.
    pub(crate) async fn lock_escrow(
        &self,
        peer: PeerId,
        escrow: EscrowId,
        amount: u64,
        ttl_ms: u64,
    ) {
        let mut channel = self.open_channel(peer, amount).await;
        let answer = self
            .propose(
                &mut channel,
                &Op::Lock {
                    escrow_id: escrow,
                    amount,
                    expires_at_ms: now_ms() + ttl_ms,
                },
            )
            .await;
        assert!(
            matches!(answer, channel_wire::Response::Countersig(_)),
            "{answer:?}"
        );
    }

    /// Sends a raw frame; returns the node's answer (`Ok(reason)`: refused with a reason,
    /// `Ok("")`: accepted) or the stream error.
    pub(crate) async fn request(&self, peer: PeerId, frame: Vec<u8>) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Request(peer, frame, tx)).await.unwrap();
        let bytes = rx.await.unwrap()?;
        if bytes.is_empty() {
            return Err("the stream closed without an answer".into());
        }
        Ok(match wire::decode_response(&bytes).unwrap() {
            Ok(()) => String::new(),
            Err(reason) => reason,
        })
    }
}

/// A signed envelope of any payload, as a forger would make it.
fn envelope(key: &Keypair, payload_type: &[u8], payload: Vec<u8>) -> Vec<u8> {
    SignedEnvelope::new(key, DOMAIN.into(), payload_type.to_vec(), payload)
        .unwrap()
        .into_protobuf_encoding()
}

fn announcement_pb(requester: &PeerId) -> pb::Announcement {
    let now = now_ms();
    pb::Announcement {
        auction_id: vec![7; 16],
        requester: requester.to_bytes(),
        task: Some(pb::TaskSpec {
            kind: Some(pb::task_spec::Kind::Pow(pb::PowTask {
                input: b"x".to_vec(),
                difficulty: 4,
            })),
        }),
        max_price: 100,
        auction_type: pb::AuctionType::SecondPrice as i32,
        created_at_ms: now,
        bid_deadline_ms: now + 1_000,
        reputation_weighted: false,
        execution_timeout_ms: 1_000,
    }
}

fn matmul(m: &mut pb::Announcement, n: u32, a_len: usize) {
    m.task = Some(pb::TaskSpec {
        kind: Some(pb::task_spec::Kind::Matmul(pb::MatmulTask {
            n,
            a: vec![1; a_len],
            b: vec![2; 32],
        })),
    });
}

fn refused(text: &str, message: &str, reason: &str) -> f64 {
    sum_where(
        text,
        "zerostate_market_messages_refused_total",
        &[
            &format!("message=\"{message}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

fn gossip(text: &str, topic: &str, verdict: &str) -> f64 {
    sum_where(
        text,
        "zerostate_p2p_gossip_messages_total",
        &[
            &format!("topic=\"{topic}\""),
            &format!("verdict=\"{verdict}\""),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_announcements_are_refused_by_reason_and_not_forwarded() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| market_config(c, true)).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let someone = PeerId::random();
    type Make = Box<dyn Fn(&Keypair, &PeerId) -> Vec<u8>>;
    type Case = (&'static str, Make, &'static str);
    let ann = Announcement::PAYLOAD_TYPE;
    let signed = |f: fn(&mut pb::Announcement)| -> Make {
        Box::new(move |k: &Keypair, me: &PeerId| {
            let mut m = announcement_pb(me);
            f(&mut m);
            envelope(k, ann, m.encode_to_vec())
        })
    };
    let cases: Vec<Case> = vec![
        (
            "garbage",
            Box::new(|_, _| b"not a protobuf envelope".to_vec()),
            "malformed",
        ),
        (
            "oversized",
            Box::new(|k, me| {
                let mut m = announcement_pb(me);
                m.auction_id = vec![0; 5000];
                envelope(k, ann, m.encode_to_vec())
            }),
            "oversized",
        ),
        (
            "unsigned payload",
            Box::new(|_, me| announcement_pb(me).encode_to_vec()),
            "malformed",
        ),
        (
            "a bid envelope",
            Box::new(|k, me| envelope(k, Bid::PAYLOAD_TYPE, announcement_pb(me).encode_to_vec())),
            "wrong_type",
        ),
        (
            "flipped signature",
            Box::new(|k, me| {
                let mut e = envelope(k, ann, announcement_pb(me).encode_to_vec());
                let last = e.len() - 1;
                e[last] ^= 1;
                e
            }),
            "bad_signature",
        ),
        (
            "another peer's announcement",
            Box::new(move |k, _| envelope(k, ann, announcement_pb(&someone).encode_to_vec())),
            "wrong_signer",
        ),
        (
            "short auction id",
            signed(|m| m.auction_id = vec![7; 15]),
            "bad_field",
        ),
        (
            "requester not a peer id",
            signed(|m| m.requester = vec![0xff; 10]),
            "bad_field",
        ),
        ("no task", signed(|m| m.task = None), "bad_field"),
        (
            "pow input too long",
            signed(|m| {
                m.task = Some(pb::TaskSpec {
                    kind: Some(pb::task_spec::Kind::Pow(pb::PowTask {
                        input: vec![0; 1025],
                        difficulty: 4,
                    })),
                })
            }),
            "bad_field",
        ),
        (
            "difficulty 0",
            signed(|m| {
                m.task = Some(pb::TaskSpec {
                    kind: Some(pb::task_spec::Kind::Pow(pb::PowTask {
                        input: vec![],
                        difficulty: 0,
                    })),
                })
            }),
            "bad_field",
        ),
        (
            "difficulty 33",
            signed(|m| {
                m.task = Some(pb::TaskSpec {
                    kind: Some(pb::task_spec::Kind::Pow(pb::PowTask {
                        input: vec![],
                        difficulty: 33,
                    })),
                })
            }),
            "bad_field",
        ),
        ("matmul n 0", signed(|m| matmul(m, 0, 32)), "bad_field"),
        ("matmul n 513", signed(|m| matmul(m, 513, 32)), "bad_field"),
        (
            "content id of 31 bytes",
            signed(|m| matmul(m, 8, 31)),
            "bad_field",
        ),
        ("max price 0", signed(|m| m.max_price = 0), "bad_field"),
        (
            "max price above 2^48",
            signed(|m| m.max_price = (1 << 48) + 1),
            "bad_field",
        ),
        (
            "auction type unspecified",
            signed(|m| m.auction_type = 0),
            "bad_field",
        ),
        (
            "auction type unknown",
            signed(|m| m.auction_type = 7),
            "bad_field",
        ),
        (
            "deadline at creation",
            signed(|m| m.bid_deadline_ms = m.created_at_ms),
            "bad_field",
        ),
        (
            "bid window over 60 s",
            signed(|m| m.bid_deadline_ms = m.created_at_ms + 60_001),
            "bad_field",
        ),
        (
            "execution timeout 99 ms",
            signed(|m| m.execution_timeout_ms = 99),
            "bad_field",
        ),
        (
            "execution timeout over 600 s",
            signed(|m| m.execution_timeout_ms = 600_001),
            "bad_field",
        ),
        (
            "created an hour ahead",
            signed(|m| {
                m.created_at_ms += 3_600_000;
                m.bid_deadline_ms += 3_600_000;
            }),
            "too_far_future",
        ),
        (
            "deadline an hour ago",
            signed(|m| {
                m.created_at_ms -= 3_600_000;
                m.bid_deadline_ms -= 3_600_000;
            }),
            "expired",
        ),
    ];
    for (name, make, reason) in &cases {
        // An expired announcement may have been late on its way: ignored, not penalised.
        let verdict = if *reason == "expired" {
            "ignored"
        } else {
            "rejected"
        };
        let before = scrape(a).await;
        // A fresh peer per case: gossipsub graylists a peer after a few invalid messages,
        // and this test wants each message judged.
        let raw = RawMarket::spawn(&[a]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw.publish(AUCTIONS_TOPIC, make(&raw.key, &raw.id)).await;
        let text = eventually(Duration::from_secs(10), name, || async {
            // The market counts the refusal, then the swarm its verdict.
            let text = scrape(a).await;
            (refused(&text, "announcement", reason) > refused(&before, "announcement", reason)
                && gossip(&text, AUCTIONS_TOPIC, verdict)
                    > gossip(&before, AUCTIONS_TOPIC, verdict))
            .then_some(text)
        })
        .await;
        assert_eq!(
            refused(&text, "announcement", reason),
            refused(&before, "announcement", reason) + 1.0,
            "{name}"
        );
        assert_eq!(
            gossip(&text, AUCTIONS_TOPIC, verdict),
            gossip(&before, AUCTIONS_TOPIC, verdict) + 1.0,
            "{name}: not forwarded; rejected (the sender penalised) unless an honest peer could have sent it"
        );
    }
    // Nothing reached B: A forwarded none of it, and B never bid.
    let text_b = scrape(b).await;
    assert_eq!(
        sum_where(
            &text_b,
            "zerostate_p2p_gossip_messages_total",
            &[AUCTIONS_TOPIC]
        ),
        0.0
    );
    assert_eq!(
        sum_where(&text_b, "zerostate_economic_bids_total", &[]),
        0.0
    );
    assert_eq!(
        sum_where(&scrape(a).await, "zerostate_economic_bids_total", &[]),
        0.0
    );
    assert_eq!(get(a, "/health").await.0, 200);
    for n in nodes {
        n.shutdown().await;
    }
}

/// Waits for an announcement of `requester` on the raw peer's gossip.
pub(crate) async fn next_announcement(
    raw: &mut RawMarket,
    requester: PeerId,
) -> Signed<Announcement> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (topic, data) = raw.gossip.recv().await.unwrap();
            if topic == AUCTIONS_TOPIC
                && let Ok(a) = open::<Announcement>(&data)
                && a.body.requester == requester
            {
                return a;
            }
        }
    })
    .await
    .expect("the announcement reaches the raw peer")
}

pub(crate) fn bid_for(key: &Keypair, a: &Announcement, price: u64) -> Bid {
    Bid {
        auction_id: a.auction_id,
        requester: a.requester,
        bidder: key.public().to_peer_id(),
        price,
        expires_at_ms: a.bid_deadline_ms + 5_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bids_awards_and_results_are_refused_by_reason_and_change_nothing() {
    let dirs: Vec<_> = (0..1).map(|_| tempfile::tempdir().unwrap()).collect();
    // The requester keeps its auction open long enough for the whole table.
    let nodes = start_network(&dirs, |c| {
        market_config(c, true);
        c.market.bid_window_ms = 30_000;
    })
    .await;
    let a = &nodes[0];
    let mut watcher = RawMarket::spawn(&[a]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let task = a
        .market()
        .submit(pow(4, AuctionType::SecondPrice))
        .await
        .unwrap();
    let auction = next_announcement(&mut watcher, a.peer_id()).await.body;
    let other = Keypair::generate_ed25519();

    let bid = |raw: &RawMarket, body: Bid| Request::Bid(sign(&raw.key, body).bytes).encode();
    // (name, frame maker, expected reason, message label in the refusal counter)
    type Make<'a> = Box<dyn Fn(&RawMarket) -> Vec<u8> + 'a>;
    let cases: Vec<(&str, Make<'_>, &str, &str)> = vec![
        (
            "garbage frame",
            Box::new(|_| b"\x00\x01garbage".to_vec()),
            "malformed",
            "request",
        ),
        (
            "bid with a flipped signature",
            Box::new(|r| {
                let mut e = sign(&r.key, bid_for(&r.key, &auction, 10)).bytes.to_vec();
                let last = e.len() - 1;
                e[last] ^= 1;
                Request::Bid(e.into()).encode()
            }),
            "bad_signature",
            "bid",
        ),
        (
            "bid for an unknown auction",
            Box::new(|r| {
                let mut b = bid_for(&r.key, &auction, 10);
                b.auction_id = AuctionId::random();
                bid(r, b)
            }),
            "unknown_auction",
            "bid",
        ),
        (
            "bid addressed to another requester",
            Box::new(|r| {
                let mut b = bid_for(&r.key, &auction, 10);
                b.requester = r.id;
                bid(r, b)
            }),
            "wrong_requester",
            "bid",
        ),
        (
            "bid above the maximum price",
            Box::new(|r| bid(r, bid_for(&r.key, &auction, auction.max_price + 1))),
            "above_max_price",
            "bid",
        ),
        (
            "bid expiring before the deadline",
            Box::new(|r| {
                let mut b = bid_for(&r.key, &auction, 10);
                b.expires_at_ms = auction.bid_deadline_ms - 1;
                bid(r, b)
            }),
            "expired",
            "bid",
        ),
        (
            "bid valid for a year",
            Box::new(|r| {
                let mut b = bid_for(&r.key, &auction, 10);
                b.expires_at_ms = auction.bid_deadline_ms + 365 * 24 * 3_600_000;
                bid(r, b)
            }),
            "bad_field",
            "bid",
        ),
        (
            "bid at price 0",
            Box::new(|r| bid(r, bid_for(&r.key, &auction, 0))),
            "bad_field",
            "bid",
        ),
        (
            "bid of another peer, relayed",
            Box::new(|_| Request::Bid(sign(&other, bid_for(&other, &auction, 10)).bytes).encode()),
            "wrong_signer",
            "bid",
        ),
        (
            "result for an unknown auction",
            Box::new(|r| {
                let result = wire::TaskResult {
                    auction_id: AuctionId::random(),
                    provider: r.id,
                    output: wire::Output::PowNonce(1),
                    execution_ms: 1,
                };
                Request::Result(sign(&r.key, result).bytes).encode()
            }),
            "unknown_auction",
            "result",
        ),
        (
            "result for an auction not awarded",
            Box::new(|r| {
                let result = wire::TaskResult {
                    auction_id: auction.auction_id,
                    provider: r.id,
                    output: wire::Output::PowNonce(1),
                    execution_ms: 1,
                };
                Request::Result(sign(&r.key, result).bytes).encode()
            }),
            "unexpected",
            "result",
        ),
        (
            "award for a bid never made",
            Box::new(|r| {
                // The raw peer's own auction, "won" by a bid the node never made.
                let mine = Announcement {
                    requester: r.id,
                    auction_id: AuctionId::random(),
                    ..auction.clone()
                };
                let fake = Bid {
                    requester: r.id,
                    ..bid_for(&r.key, &mine, 10)
                };
                let award = Award {
                    announcement: sign(&r.key, mine),
                    winner_bid: sign(&r.key, fake),
                    runner_up_bid: None,
                    price: auction.max_price,
                    winner_weight: 1000,
                    runner_up_weight: 1000,
                };
                Request::Award(sign(&r.key, award).bytes).encode()
            }),
            "not_winner",
            "award",
        ),
    ];
    for (name, make, reason, message) in &cases {
        let before = scrape(a).await;
        // A fresh peer per case, so one case's reputation penalty cannot block the next.
        let raw = RawMarket::spawn(&[a]).await;
        let answer = raw.request(a.peer_id(), make(&raw)).await;
        assert_eq!(answer.as_deref(), Ok(*reason), "{name}");
        let text = scrape(a).await;
        assert_eq!(
            refused(&text, message, reason),
            refused(&before, message, reason) + 1.0,
            "{name}"
        );
    }

    // Replay and a second bid from the same bidder, after one accepted bid.
    let raw = RawMarket::spawn(&[a]).await;
    let good = bid(&raw, bid_for(&raw.key, &auction, 10));
    assert_eq!(
        raw.request(a.peer_id(), good.clone()).await.as_deref(),
        Ok("")
    );
    assert_eq!(
        raw.request(a.peer_id(), good).await.as_deref(),
        Ok("replay")
    );
    let second = bid(&raw, bid_for(&raw.key, &auction, 9));
    assert_eq!(
        raw.request(a.peer_id(), second).await.as_deref(),
        Ok("duplicate_bidder")
    );
    // A frame over the size limit is refused by the codec, before any decoding.
    let before = scrape(a).await;
    let huge = vec![0u8; zerostate::p2p::MAX_MARKET_REQUEST_BYTES as usize + 1];
    let fresh = RawMarket::spawn(&[a]).await;
    assert!(fresh.request(a.peer_id(), huge).await.is_err());
    let text = scrape(a).await;
    let malformed = r#"zerostate_p2p_malformed_messages_total{protocol="market"}"#;
    assert_eq!(
        metric_value(&text, malformed).unwrap_or(0.0),
        metric_value(&before, malformed).unwrap_or(0.0) + 1.0
    );

    // Only the one good bid changed the auction.
    let view = a.market().task(task).await.unwrap().unwrap();
    let bids = &view.attempts[0].bids;
    assert_eq!(bids.len(), 1, "{view:#?}");
    assert_eq!(bids[0].bidder, raw.id.to_string());
    assert_eq!(get(a, "/health").await.0, 200);
    drop(watcher);
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_understates_the_second_price_is_refused_by_winner_and_observers() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| market_config(c, true)).await;
    let mut liar = RawMarket::spawn(&nodes.iter().collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Runs one auction as the raw requester and returns the bids received.
    async fn auction(liar: &mut RawMarket, n: usize) -> (Signed<Announcement>, Vec<Signed<Bid>>) {
        let now = now_ms();
        let a = sign(
            &liar.key,
            Announcement {
                auction_id: AuctionId::random(),
                requester: liar.id,
                task: TaskSpec::Pow {
                    input: b"lie".to_vec(),
                    difficulty: 4,
                },
                max_price: 1000,
                auction_type: AuctionType::SecondPrice,
                created_at_ms: now,
                bid_deadline_ms: now + 3_000,
                reputation_weighted: false,
                execution_timeout_ms: 10_000,
            },
        );
        liar.publish(AUCTIONS_TOPIC, a.bytes.to_vec()).await;
        let mut bids = Vec::new();
        while bids.len() < n {
            let (_, frame) = tokio::time::timeout(Duration::from_secs(20), liar.requests.recv())
                .await
                .expect("the providers bid")
                .unwrap();
            if let Ok(Request::Bid(b)) = Request::decode(&frame)
                && let Ok(b) = open::<Bid>(&b)
                && b.body.auction_id == a.body.auction_id
            {
                bids.push(b);
            }
        }
        bids.sort_by_key(|b| b.body.price);
        (a, bids)
    }

    // The lie: the winner is paid less than the runner-up's bid.
    let (a, bids) = auction(&mut liar, 3).await;
    let (winner, runner_up) = (&bids[0], &bids[1]);
    let award = Award {
        announcement: a.clone(),
        winner_bid: winner.clone(),
        runner_up_bid: Some(runner_up.clone()),
        price: runner_up.body.price - 1,
        winner_weight: 1000,
        runner_up_weight: 1000,
    };
    let signed = sign(&liar.key, award);
    let winner_node = nodes
        .iter()
        .find(|n| n.peer_id() == winner.body.bidder)
        .unwrap();
    let frame = Request::Award(signed.bytes.clone()).encode();
    assert_eq!(
        liar.request(winner_node.peer_id(), frame).await.as_deref(),
        Ok("bad_price"),
        "the winner refuses the award"
    );
    liar.publish(RESULTS_TOPIC, signed.bytes.to_vec()).await;
    for node in &nodes {
        let text = eventually(
            Duration::from_secs(10),
            "every node rejects the result",
            || async {
                let text = scrape(node).await;
                (gossip(&text, RESULTS_TOPIC, "rejected") >= 1.0).then_some(text)
            },
        )
        .await;
        assert!(refused(&text, "award", "bad_price") >= 1.0);
        assert_eq!(
            node.market()
                .observed(liar.id, a.body.auction_id)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            sum_where(&text, "zerostate_economic_task_duration_seconds_count", &[]),
            0.0
        );
    }

    // The control: the same award with the price the rule gives is accepted and executed.
    let (a, bids) = auction(&mut liar, 3).await;
    let (winner, runner_up) = (&bids[0], &bids[1]);
    let award = Award {
        announcement: a.clone(),
        winner_bid: winner.clone(),
        runner_up_bid: Some(runner_up.clone()),
        price: runner_up.body.price,
        winner_weight: 1000,
        runner_up_weight: 1000,
    };
    let signed = sign(&liar.key, award);
    let frame = Request::Award(signed.bytes.clone()).encode();
    // Without the price locked for it, the winner does not take the award.
    assert_eq!(
        liar.request(winner.body.bidder, frame.clone())
            .await
            .as_deref(),
        Ok("no_escrow")
    );
    // Nor with a lock that would expire before its execution time is up.
    let escrow = zerostate::market::escrow_id(&liar.id, a.body.auction_id);
    liar.lock_escrow(winner.body.bidder, escrow, runner_up.body.price, 2_000)
        .await;
    assert_eq!(
        liar.request(winner.body.bidder, frame.clone())
            .await
            .as_deref(),
        Ok("no_escrow")
    );
    liar.lock_escrow(winner.body.bidder, escrow, runner_up.body.price, 60_000)
        .await;
    assert_eq!(
        liar.request(winner.body.bidder, frame).await.as_deref(),
        Ok("")
    );
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, frame) = liar.requests.recv().await.unwrap();
            if let Ok(Request::Result(r)) = Request::decode(&frame) {
                return open::<wire::TaskResult>(&r).unwrap();
            }
        }
    })
    .await
    .expect("the winner delivers");
    assert_eq!(result.body.provider, winner.body.bidder);
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winner_that_refuses_its_award_is_blamed_and_left_out_of_the_retry() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| market_config(c, true)).await;
    let (requester, honest) = (&nodes[0], &nodes[1]);
    let mut refuser = RawMarket::spawn_with(&[requester, honest], true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let task = requester
        .market()
        .submit(pow(4, AuctionType::SecondPrice))
        .await
        .unwrap();
    // The refuser undercuts everyone (price 1), wins, and claims its bid had lapsed.
    let first = next_announcement(&mut refuser, requester.peer_id())
        .await
        .body;
    let bid = Request::Bid(sign(&refuser.key, bid_for(&refuser.key, &first, 1)).bytes).encode();
    assert_eq!(
        refuser.request(requester.peer_id(), bid).await.as_deref(),
        Ok("")
    );
    // The task is re-auctioned without it.
    let second = next_announcement(&mut refuser, requester.peer_id())
        .await
        .body;
    assert_ne!(second.auction_id, first.auction_id);
    let bid = Request::Bid(sign(&refuser.key, bid_for(&refuser.key, &second, 1)).bytes).encode();
    assert_eq!(
        refuser.request(requester.peer_id(), bid).await.as_deref(),
        Ok("excluded")
    );
    let view = crate::market::finished(requester, task).await;
    assert_eq!(
        view.status,
        zerostate::market::TaskStatus::Success,
        "{view:#?}"
    );
    assert_eq!(view.winner, Some(honest.peer_id().to_string()));
    assert_eq!(view.attempts[0].outcome.as_deref(), Some("award_refused"));
    // What it answered did not decide: the award was on time, so it is to blame.
    let records = requester.market().reputation().await.unwrap();
    let record = records
        .iter()
        .find(|r| r.peer_id == refuser.id.to_string())
        .expect("the refuser has a record");
    assert_eq!(record.failures, 1, "{record:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_result_under_the_same_auction_id_does_not_void_the_real_auction() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| {
        market_config(c, true);
        c.market.bid_window_ms = 2_000;
    })
    .await;
    let (requester, provider) = (&nodes[0], &nodes[1]);
    let mut forger = RawMarket::spawn(&[requester, provider]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let task = requester
        .market()
        .submit(pow(4, AuctionType::FirstPrice))
        .await
        .unwrap();
    let real = next_announcement(&mut forger, requester.peer_id())
        .await
        .body;
    // While the provider's bid is open, the forger publishes "the result" of an auction of
    // its own under the same id, won by itself.
    let fake = Announcement {
        requester: forger.id,
        created_at_ms: now_ms() - 2_000,
        bid_deadline_ms: now_ms() - 1_000,
        ..real.clone()
    };
    let fake_bid = Bid {
        expires_at_ms: fake.bid_deadline_ms + 5_000,
        ..bid_for(&forger.key, &fake, 1)
    };
    let award = Award {
        announcement: sign(&forger.key, fake),
        winner_bid: sign(&forger.key, fake_bid),
        runner_up_bid: None,
        price: 1,
        winner_weight: 1000,
        runner_up_weight: 1000,
    };
    forger
        .publish(RESULTS_TOPIC, sign(&forger.key, award).bytes.to_vec())
        .await;
    let view = crate::market::finished(requester, task).await;
    assert_eq!(
        view.status,
        zerostate::market::TaskStatus::Success,
        "{view:#?}"
    );
    assert_eq!(
        view.attempts.len(),
        1,
        "the provider kept its bid: {view:#?}"
    );
    assert_eq!(view.winner, Some(provider.peer_id().to_string()));
    // Both auctions are known apart, by requester and id.
    let real_outcome = eventually(Duration::from_secs(10), "the real result", || async {
        provider
            .market()
            .observed(requester.peer_id(), real.auction_id)
            .await
            .ok()?
    })
    .await;
    assert_eq!(real_outcome.winner, provider.peer_id());
    let forged = provider
        .market()
        .observed(forger.id, real.auction_id)
        .await
        .unwrap();
    assert_eq!(forged.map(|o| o.winner), Some(forger.id));
    for n in nodes {
        n.shutdown().await;
    }
}
