//! Cheap refusals stay cheap: a peer that replays a self-signed award as fast as it can is
//! held to its token bucket before anything decodes its requests, and honest tasks between
//! the same requester and provider still succeed; refusals that need no signature are
//! given before any signature check; a winner's retried result is not a fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;
use zerostate::NodeHandle;
use zerostate::market::TaskStatus;
use zerostate::market::kinds::pow_solve;
use zerostate::market::wire::{
    Announcement, AuctionId, AuctionType, Award, Bid, Output, Request, TaskResult, TaskSpec,
    now_ms, sign,
};
use zerostate::p2p::MARKET_PROTOCOL;

use crate::common::*;
use crate::market::{finished, market_config, pow, sum_where};
use crate::market_hostile::{RawMarket, bid_for, next_announcement};

#[derive(NetworkBehaviour)]
struct FloodBehaviour {
    market: request_response::Behaviour<RawCodec>,
}

/// What a flooding peer saw.
#[derive(Default)]
struct FloodStats {
    /// Requests sent.
    sent: AtomicU64,
    /// Requests the node answered (they reached its market service).
    answered: AtomicU64,
    /// Requests dropped unanswered (refused before the service) or failed.
    dropped: AtomicU64,
}

/// Requests a flooder keeps in flight per target (the node serves 64 streams at once per
/// connection).
const FLOOD_DEPTH: usize = 64;
/// Flooding identities, all from this process (one address).
const FLOODERS: usize = 4;

/// Connects identity `key` to `targets` and sends them `frame` as fast as it can, keeping
/// [`FLOOD_DEPTH`] requests in flight to each, until `stop`.
async fn flood(
    key: Keypair,
    targets: Vec<(PeerId, Multiaddr)>,
    frame: Vec<u8>,
    stop: CancellationToken,
) -> (PeerId, Arc<FloodStats>) {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| FloodBehaviour {
            market: request_response::Behaviour::with_codec(
                RawCodec,
                [(MARKET_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(5))
                    .with_max_concurrent_streams(FLOOD_DEPTH * 2),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let id = *swarm.local_peer_id();
    for (peer, addr) in &targets {
        swarm
            .dial(
                libp2p::swarm::dial_opts::DialOpts::peer_id(*peer)
                    .addresses(vec![addr.clone()])
                    .build(),
            )
            .unwrap();
    }
    let mut connected = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while connected.len() < targets.len() {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                swarm.select_next_some().await
            {
                connected.insert(peer_id);
            }
        }
    })
    .await
    .expect("the flooder connects");
    let stats = Arc::new(FloodStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        let mut in_flight = std::collections::HashMap::new();
        let send = |swarm: &mut libp2p::Swarm<FloodBehaviour>,
                    in_flight: &mut std::collections::HashMap<_, _>,
                    peer: PeerId| {
            let id = swarm
                .behaviour_mut()
                .market
                .send_request(&peer, frame.clone());
            in_flight.insert(id, peer);
            s.sent.fetch_add(1, Ordering::Relaxed);
        };
        for (peer, _) in &targets {
            for _ in 0..FLOOD_DEPTH {
                send(&mut swarm, &mut in_flight, *peer);
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = swarm.select_next_some() => {
                    let done = match event {
                        SwarmEvent::Behaviour(FloodBehaviourEvent::Market(
                            request_response::Event::Message {
                                message: request_response::Message::Response { request_id, response },
                                ..
                            },
                        )) => {
                            let counter = if response.is_empty() { &s.dropped } else { &s.answered };
                            counter.fetch_add(1, Ordering::Relaxed);
                            in_flight.remove(&request_id)
                        }
                        SwarmEvent::Behaviour(FloodBehaviourEvent::Market(
                            request_response::Event::OutboundFailure { request_id, .. },
                        )) => {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                            in_flight.remove(&request_id)
                        }
                        _ => None,
                    };
                    // Replace every finished request at once: as fast as the node answers.
                    if let Some(peer) = done {
                        send(&mut swarm, &mut in_flight, peer);
                    }
                }
            }
        }
    });
    (id, stats)
}

/// An award its sender signed for an auction and a "winning" bid of its own: valid
/// signatures throughout, for a bid the receiver never made.
fn self_signed_award(key: &Keypair) -> Vec<u8> {
    let me = key.public().to_peer_id();
    let now = now_ms();
    let announcement = Announcement {
        auction_id: AuctionId::random(),
        requester: me,
        task: TaskSpec::Pow {
            input: b"flood".to_vec(),
            difficulty: 4,
        },
        max_price: 1_000,
        auction_type: AuctionType::SecondPrice,
        created_at_ms: now,
        bid_deadline_ms: now + 1_000,
        reputation_weighted: false,
        execution_timeout_ms: 10_000,
    };
    let bid = Bid {
        auction_id: announcement.auction_id,
        requester: me,
        bidder: me,
        price: 1,
        expires_at_ms: now + 600_000,
    };
    let award = Award {
        announcement: sign(key, announcement),
        winner_bid: sign(key, bid),
        runner_up_bid: None,
        // A second-price auction with one bid pays the maximum price: a valid award.
        price: 1_000,
        winner_weight: 1000,
        runner_up_weight: 1000,
    };
    Request::Award(sign(key, award).bytes).encode()
}

fn target(node: &NodeHandle) -> (PeerId, Multiaddr) {
    (node.peer_id(), node.p2p().status().listen_addrs[0].clone())
}

fn refused(text: &str, message: &str, reason: &str) -> f64 {
    sum_where(
        text,
        "zerostate_market_messages_refused_total",
        &[
            &format!(r#"message="{message}""#),
            &format!(r#"reason="{reason}""#),
        ],
    )
}

fn rate_limited(text: &str) -> f64 {
    sum_where(
        text,
        "zerostate_p2p_inbound_refused_total",
        &[r#"protocol="market""#, r#"reason="rate_limited""#],
    )
}

/// A requester (node 0) and a provider (node 1), connected, with the shipped limits.
async fn pair(dirs: &[tempfile::TempDir]) -> Vec<NodeHandle> {
    let mut config = test_config(dirs[0].path(), vec![]);
    market_config(&mut config, false);
    let requester = start(config).await;
    let mut config = test_config(dirs[1].path(), vec![p2p_addr(&requester)]);
    market_config(&mut config, true);
    let provider = start(config).await;
    for node in [&requester, &provider] {
        eventually(Duration::from_secs(30), "the pair connects", || async {
            (!node.p2p().connected_peers().await.ok()?.is_empty()).then_some(())
        })
        .await;
    }
    // Gossipsub needs a heartbeat to learn who subscribes to what.
    tokio::time::sleep(Duration::from_secs(2)).await;
    vec![requester, provider]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_is_held_to_its_token_bucket_while_honest_tasks_succeed() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = pair(&dirs).await;
    let (requester, provider) = (&nodes[0], &nodes[1]);
    let limits = zerostate::config::LimitsConfig::default();
    let before = scrape(provider).await;

    // FLOODERS identities from this process each replay one self-signed award at both
    // nodes, as fast as they answer.
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut all = Vec::new();
    for _ in 0..FLOODERS {
        let key = Keypair::generate_ed25519();
        let award = self_signed_award(&key);
        let targets = vec![target(requester), target(provider)];
        all.push(flood(key, targets, award, stop.clone()).await.1);
    }

    // Meanwhile the requester runs its tasks with the provider, one every 250 ms.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(
            requester
                .market()
                .submit(pow(8, AuctionType::SecondPrice))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut succeeded = 0;
    for id in &tasks {
        let view = finished(requester, *id).await;
        if view.status == TaskStatus::Success {
            succeeded += 1;
        } else {
            eprintln!("task {id} failed: {view:#?}");
        }
    }
    let after = scrape(provider).await;
    stop.cancel();
    let elapsed = started.elapsed().as_secs_f64();
    let total = |f: fn(&FloodStats) -> &AtomicU64| -> u64 {
        all.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    };
    let sent = total(|s| &s.sent);
    let answered = total(|s| &s.answered);
    let dropped = total(|s| &s.dropped);
    let limited = rate_limited(&after) - rate_limited(&before);
    let reached = refused(&after, "award", "not_winner") - refused(&before, "award", "not_winner");
    eprintln!(
        "flood: {sent} sent in {elapsed:.1} s, {answered} answered, {dropped} dropped; \
         provider: {limited} rate limited, {reached} refused not_winner; \
         honest: {succeeded}/20 succeeded"
    );

    // At least 95% of the honest tasks succeed.
    assert!(succeeded >= 19, "{succeeded} of 20 honest tasks succeeded");
    // The flood overran the bucket and was refused by it, counted.
    assert!(limited >= 1.0, "nothing was rate limited");
    // What reached the provider's market is within the flooders' buckets.
    let bucket = FLOODERS as f64
        * (f64::from(limits.peer_request_burst)
            + f64::from(limits.peer_requests_per_sec) * (elapsed + 2.0));
    assert!(
        reached <= bucket,
        "{reached} flood awards reached the market, the bucket allows {bucket}"
    );
    assert!(reached >= 1.0, "the flood was answered as not_winner");
    assert_eq!(get(provider, "/health").await.0, 200);
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_need_no_signature_come_before_any_signature_check() {
    let dirs: Vec<_> = (0..1).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| market_config(c, true)).await;
    let node = &nodes[0];
    let raw = RawMarket::spawn(&[node]).await;
    let flip = |frame: Vec<u8>| {
        // The request frame ends with the envelope's signature: break it.
        let mut f = frame;
        let last = f.len() - 1;
        f[last] ^= 1;
        f
    };
    // A self-signed award with a broken signature, for a bid the node never made: the
    // lookup refuses it, no signature is checked (else: bad_signature).
    let award = flip(self_signed_award(&raw.key));
    assert_eq!(
        raw.request(node.peer_id(), award).await.as_deref(),
        Ok("not_winner")
    );
    // The same for a bid and a result for an auction the node does not run.
    let bid = Bid {
        auction_id: AuctionId::random(),
        requester: node.peer_id(),
        bidder: raw.id,
        price: 10,
        expires_at_ms: now_ms() + 60_000,
    };
    let bid = flip(Request::Bid(sign(&raw.key, bid).bytes).encode());
    assert_eq!(
        raw.request(node.peer_id(), bid).await.as_deref(),
        Ok("unknown_auction")
    );
    let result = TaskResult {
        auction_id: AuctionId::random(),
        provider: raw.id,
        output: Output::PowNonce(1),
        execution_ms: 1,
    };
    let result = flip(Request::Result(sign(&raw.key, result).bytes).encode());
    assert_eq!(
        raw.request(node.peer_id(), result).await.as_deref(),
        Ok("unknown_auction")
    );
    // None of these is a fault: the peer is not penalised.
    let records = node.market().reputation().await.unwrap();
    assert!(
        records.iter().all(|r| r.peer_id != raw.id.to_string()),
        "{records:?}"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_result_is_not_a_fault() {
    let dirs: Vec<_> = (0..1).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| market_config(c, false)).await;
    let requester = &nodes[0];
    let mut winner = RawMarket::spawn(&[requester]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let task = requester
        .market()
        .submit(pow(6, AuctionType::SecondPrice))
        .await
        .unwrap();
    let announcement = next_announcement(&mut winner, requester.peer_id())
        .await
        .body;
    let bid = Request::Bid(sign(&winner.key, bid_for(&winner.key, &announcement, 5)).bytes);
    assert_eq!(
        winner
            .request(requester.peer_id(), bid.encode())
            .await
            .as_deref(),
        Ok("")
    );
    // The award arrives (the raw peer countersigned the escrow lock first).
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, frame) = winner.requests.recv().await.unwrap();
            if matches!(Request::decode(&frame), Ok(Request::Award(_))) {
                return;
            }
        }
    })
    .await
    .expect("the raw peer is awarded the task");
    let TaskSpec::Pow { input, difficulty } = &announcement.task else {
        unreachable!("a pow task")
    };
    let nonce = pow_solve(input, *difficulty, Instant::now() + Duration::from_secs(10)).unwrap();
    let result = TaskResult {
        auction_id: announcement.auction_id,
        provider: winner.id,
        output: Output::PowNonce(nonce),
        execution_ms: 1,
    };
    let frame = Request::Result(sign(&winner.key, result).bytes).encode();
    // Sent several times at once, as retries after lost answers would: the copies that
    // arrive while the first is verified are answered as accepted, later ones as for an
    // auction that is over; none is a fault.
    let before = scrape(requester).await;
    let copies = (0..16).map(|_| winner.request(requester.peer_id(), frame.clone()));
    let answers: Vec<String> = futures::future::join_all(copies)
        .await
        .into_iter()
        .map(|a| a.unwrap_or_else(|e| format!("no answer: {e}")))
        .collect();
    eprintln!("answers to a result sent 16 times: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a.is_empty() || a == "unknown_auction"),
        "{answers:?}"
    );
    let view = finished(requester, task).await;
    assert_eq!(view.status, TaskStatus::Success, "{view:#?}");
    let after = scrape(requester).await;
    assert_eq!(
        refused(&after, "result", "unexpected"),
        refused(&before, "result", "unexpected")
    );
    // The winner keeps a clean record: one success, no penalty for the retry.
    let records = requester.market().reputation().await.unwrap();
    let record = records
        .iter()
        .find(|r| r.peer_id == winner.id.to_string())
        .expect("the winner has a record");
    assert_eq!((record.successes, record.failures), (1, 0), "{record:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_holds_at_most_its_share_of_the_inboxes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    market_config(&mut config, true);
    // Buckets out of the way: only the cap on a peer's waiting requests is left.
    config.limits.peer_requests_per_sec = 1_000_000;
    config.limits.peer_request_burst = 1_000_000;
    config.limits.address_requests_per_sec = 1_000_000;
    config.limits.address_request_burst = 1_000_000;
    config.limits.max_inflight_requests_per_peer = 2;
    let node = start(config).await;
    let stop = CancellationToken::new();
    let key = Keypair::generate_ed25519();
    let award = self_signed_award(&key);
    let (_, stats) = flood(key, vec![target(&node)], award, stop.clone()).await;
    let busy = eventually(
        Duration::from_secs(30),
        "the peer's excess requests are refused",
        || async {
            let text = scrape(&node).await;
            let busy = sum_where(
                &text,
                "zerostate_p2p_inbound_refused_total",
                &[r#"protocol="market""#, r#"reason="peer_busy""#],
            );
            (busy >= 100.0).then_some(busy)
        },
    )
    .await;
    stop.cancel();
    // The rest were served: the peer's requests got through, two at a time.
    assert!(stats.answered.load(Ordering::Relaxed) > 0);
    eprintln!(
        "peer_busy: {busy}, answered {}",
        stats.answered.load(Ordering::Relaxed)
    );
    node.shutdown().await;
}
