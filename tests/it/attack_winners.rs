//! Fake winners and partitions, against real nodes. Fresh identities (raw swarms, each its own
//! key) bid 1 on every auction and then never answer the lock or the award: every failure they
//! cause is blamed on them, they are on probation (their tasks go to providers with history
//! next), and honest tasks still succeed. A provider cut off in the middle of an award only
//! gets a strike: it is not banned, and its next successes raise its score.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::PeerId;
use libp2p::gossipsub::{self};
use libp2p::identity::Keypair;
use libp2p::request_response::{self};
use libp2p::swarm::SwarmEvent;
use zerostate::market::wire::{
    AUCTIONS_TOPIC, Announcement, AuctionId, AuctionType, Bid, Request, open, sign,
};
use zerostate::market::{PeerReputation, TaskStatus};
use zerostate::{Config, NodeHandle};

use crate::common::*;
use crate::market::{finished, pow};
use crate::market_hostile::RawMarketBehaviourEvent;

/// A fresh identity that bids 1 on every auction it hears of and never answers anything sent
/// to it (channel opens, locks, awards): it holds the streams until they time out.
struct FakeWinner {
    id: PeerId,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWinner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWinner {
    fn spawn(targets: &[&NodeHandle]) -> Self {
        let key = Keypair::generate_ed25519();
        let mut swarm = crate::market_hostile::market_swarm(&key, targets);
        let id = *swarm.local_peer_id();
        let task = tokio::spawn(async move {
            // Held, never answered: the node waits for an answer that does not come.
            let mut held_market = Vec::new();
            let mut held_channel = Vec::new();
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(RawMarketBehaviourEvent::Gossipsub(
                        gossipsub::Event::Message { message, .. },
                    )) if message.topic.as_str() == AUCTIONS_TOPIC => {
                        let Ok(a) = open::<Announcement>(&message.data) else {
                            continue;
                        };
                        let bid = sign(
                            &key,
                            Bid {
                                auction_id: a.body.auction_id,
                                requester: a.body.requester,
                                bidder: id,
                                price: 1,
                                expires_at_ms: a.body.bid_deadline_ms + 8_000,
                            },
                        );
                        let frame = Request::Bid(bid.bytes).encode();
                        swarm
                            .behaviour_mut()
                            .market
                            .send_request(&a.body.requester, frame);
                    }
                    SwarmEvent::Behaviour(RawMarketBehaviourEvent::Market(
                        request_response::Event::Message {
                            message: request_response::Message::Request { channel, .. },
                            ..
                        },
                    )) => held_market.push(channel),
                    SwarmEvent::Behaviour(RawMarketBehaviourEvent::Channel(
                        request_response::Event::Message {
                            message: request_response::Message::Request { channel, .. },
                            ..
                        },
                    )) => held_channel.push(channel),
                    _ => {}
                }
            }
        });
        Self { id, task }
    }
}

/// Market settings of these tests: a short bid window, the default award timeout and
/// retries, small channel deposits (the channels a fake winner leaves stalled, and the credit
/// they hold, are not what these tests measure).
fn attack_config(c: &mut Config, provider: bool) {
    c.market.bid_window_ms = 600;
    c.market.execution_timeout_ms = 20_000;
    c.market.max_retries = 2;
    // Bids on auctions a fake won are never published as lost, so they hold their slots
    // until they expire: enough slots that honest providers still bid on the retries.
    c.market.provider.capacity = 8;
    c.market.provider.price_jitter_percent = 0;
    if !provider {
        c.market.provider.kinds.clear();
    }
    c.payments.channel_deposit = 10_000;
    // A channel closed after a failed lock settles quickly, so its provider can be locked to
    // again within the test.
    c.payments.challenge_secs = 2;
}

async fn reputation_of(node: &NodeHandle) -> HashMap<String, PeerReputation> {
    node.market()
        .reputation()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.peer_id.clone(), r))
        .collect()
}

/// Honest tasks of the fake-winner test.
const TASKS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_fake_winners_do_not_stop_honest_tasks() {
    let started = Instant::now();
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    // Nodes 0 and 1 request (they offer nothing); 2, 3 and 4 provide.
    let mut config = test_config(dirs[0].path(), vec![]);
    attack_config(&mut config, false);
    nodes.push(start(config).await);
    let boot = p2p_addr(&nodes[0]);
    for (i, dir) in dirs[1..].iter().enumerate() {
        let mut c = test_config(dir.path(), vec![boot.clone()]);
        attack_config(&mut c, i >= 1);
        nodes.push(start(c).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        eventually(
            Duration::from_secs(60),
            &format!("node {i} connected"),
            || async { (node.p2p().connected_peers().await.ok()?.len() >= 4).then_some(()) },
        )
        .await;
    }
    let (requesters, providers) = nodes.split_at(2);
    // The honest market first: each requester gets verified results from providers.
    let mut warm = Vec::new();
    for r in requesters {
        for _ in 0..3 {
            let id = r
                .market()
                .submit(pow(8, AuctionType::SecondPrice))
                .await
                .unwrap();
            warm.push((r, id));
        }
    }
    for (r, id) in &warm {
        let t = finished(r, *id).await;
        assert_eq!(t.status, TaskStatus::Success, "warm-up: {t:?}");
    }
    let provider_ids: Vec<String> = providers.iter().map(|p| p.peer_id().to_string()).collect();
    let mut before = Vec::new();
    for r in requesters {
        before.push(reputation_of(r).await);
    }

    // Ten fresh identities bid 1 on every auction and never answer.
    let targets: Vec<&NodeHandle> = nodes.iter().collect();
    // One after the other: a node takes at most 8 pending connections per IP address.
    let mut fakes = Vec::new();
    // ATTACK_FAKES=0 measures the same load without the attack.
    let n_fakes: usize = std::env::var("ATTACK_FAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    for _ in 0..n_fakes {
        let fake = FakeWinner::spawn(&targets);
        for r in requesters {
            eventually(Duration::from_secs(20), "a fake connects", || async {
                let peers = r.p2p().connected_peers().await.ok()?;
                peers.contains(&fake.id).then_some(())
            })
            .await;
        }
        fakes.push(fake);
    }
    let fake_ids: Vec<String> = fakes.iter().map(|f| f.id.to_string()).collect();
    // Let the gossip meshes take the fakes in, so they hear of the auctions.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A steady load: 40 tasks, one every 400 ms, alternating requesters, weighted and
    // unweighted, first and second price.
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let r = &requesters[i % 2];
        let kind = if i % 3 == 0 {
            AuctionType::FirstPrice
        } else {
            AuctionType::SecondPrice
        };
        let mut request = pow(8, kind);
        request.reputation_weighted = Some(i % 4 >= 2);
        ids.push((r, r.market().submit(request).await.unwrap()));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut succeeded = 0;
    let mut fake_wins = 0;
    let mut latencies = Vec::new();
    for (r, id) in &ids {
        let t = finished(r, *id).await;
        for a in &t.attempts {
            if a.winner.as_ref().is_some_and(|w| fake_ids.contains(w)) {
                fake_wins += 1;
                assert_ne!(a.outcome.as_deref(), Some("success"), "{t:?}");
            }
        }
        if std::env::var("ATTACK_DEBUG").is_ok() {
            for a in &t.attempts {
                let honest = a
                    .bids
                    .iter()
                    .filter(|b| provider_ids.contains(&b.bidder))
                    .count();
                let fake = a.winner.as_ref().is_some_and(|w| fake_ids.contains(w));
                eprintln!(
                    "task {id}: {} bids ({honest} honest), fake winner {fake}, outcome {:?}",
                    a.bids.len(),
                    a.outcome
                );
            }
        }
        if t.status == TaskStatus::Success {
            succeeded += 1;
            let winner = t.winner.clone().unwrap();
            assert!(
                provider_ids.contains(&winner),
                "an honest provider won: {t:?}"
            );
            latencies.push(t.finished_ms.unwrap() - t.submitted_ms);
        } else {
            eprintln!("failed task: {t:?}");
        }
    }
    latencies.sort_unstable();
    eprintln!(
        "fake winners: {succeeded}/{TASKS} honest tasks succeeded, {fake_wins} attempts won by fakes, \
         p50 {} ms, test time {:?}",
        latencies.get(latencies.len() / 2).copied().unwrap_or(0),
        started.elapsed()
    );
    // The attack was real: the fakes won awards.
    assert!(
        n_fakes == 0 || fake_wins >= 2,
        "the fake winners never won ({fake_wins})"
    );
    assert!(
        succeeded * 100 >= TASKS * 95,
        "only {succeeded} of {TASKS} honest tasks succeeded"
    );

    // Every fake that won was blamed; no honest provider was, and no honest score fell.
    for (i, r) in requesters.iter().enumerate() {
        let after = reputation_of(r).await;
        for p in &provider_ids {
            let b = before[i].get(p);
            let b_score = b.map_or(0.5, |b| b.score);
            let b_failures = b.map_or(0, |b| b.failures);
            if let Some(a) = after.get(p) {
                assert_eq!(a.failures, b_failures, "honest provider {p} blamed: {a:?}");
                // Scores only decay toward neutral (half-life 1 h) between the two looks.
                assert!(
                    a.score >= b_score - 0.005,
                    "honest provider {p}: {b_score} -> {}",
                    a.score
                );
                assert!(!a.banned);
            }
        }
        for f in &fake_ids {
            if let Some(rec) = after.get(f) {
                assert_eq!(rec.successes, 0);
                assert!(rec.failures >= 1, "a fake winner was not blamed: {rec:?}");
            }
        }
    }
    let text = scrape(&requesters[0]).await;
    assert!(metric_sum(&text, "zerostate_market_probation_bids_total").is_some());
    assert!(metric_sum(&text, "zerostate_market_peers_on_probation").is_some());
    drop(fakes);
}

/// Waits until the last attempt of `task` has a bid of `bidder`.
async fn wait_for_bid(node: &NodeHandle, task: AuctionId, bidder: &str) {
    eventually(Duration::from_secs(20), "the provider bids", || async {
        let t = node.market().task(task).await.ok()??;
        let last = t.attempts.last()?;
        last.bids.iter().any(|b| b.bidder == bidder).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cut_off_during_an_award_is_not_banned_and_recovers() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut config = test_config(dirs[0].path(), vec![]);
    attack_config(&mut config, false);
    // A bid window long enough for the test to cut the winner off before it closes.
    config.market.bid_window_ms = 1_500;
    let requester = start(config).await;
    let boot = p2p_addr(&requester);
    let mut providers = Vec::new();
    for (i, dir) in dirs[1..].iter().enumerate() {
        let mut c = test_config(dir.path(), vec![boot.clone()]);
        attack_config(&mut c, true);
        // Provider 0 is the cheap one: it wins whenever it bids.
        c.market.provider.base_price = if i == 0 { 5 } else { 50 };
        providers.push(start(c).await);
    }
    let cheap = providers[0].peer_id();
    let cheap_id = cheap.to_string();
    eventually(Duration::from_secs(30), "connected", || async {
        let peers = requester.p2p().connected_peers().await.ok()?;
        providers
            .iter()
            .all(|p| peers.contains(&p.peer_id()))
            .then_some(())
    })
    .await;
    let weighted = || {
        let mut r = pow(8, AuctionType::SecondPrice);
        r.reputation_weighted = Some(true);
        r
    };
    // History: the cheap provider delivers twice.
    for _ in 0..2 {
        let id = requester.market().submit(weighted()).await.unwrap();
        let t = finished(&requester, id).await;
        assert_eq!(t.status, TaskStatus::Success);
        assert_eq!(t.winner.as_deref(), Some(cheap_id.as_str()));
    }
    let before = reputation_of(&requester).await[&cheap_id].clone();

    // Twice, the cheap provider is cut off right after its bid, and back a little later.
    for _ in 0..2 {
        let id = requester.market().submit(weighted()).await.unwrap();
        wait_for_bid(&requester, id, &cheap_id).await;
        requester.p2p().block(cheap).await.unwrap();
        let t = finished(&requester, id).await;
        let cut = t
            .attempts
            .iter()
            .find(|a| a.winner.as_deref() == Some(cheap_id.as_str()))
            .unwrap_or_else(|| panic!("the cut-off provider won no attempt: {t:?}"));
        assert_eq!(cut.outcome.as_deref(), Some("unreachable"), "{t:?}");
        // The task itself went on to the other provider.
        assert_eq!(t.status, TaskStatus::Success, "{t:?}");
        requester.p2p().unblock(cheap).await.unwrap();
        // Back: connected, and no state of its channel left waiting.
        eventually(Duration::from_secs(30), "the provider is back", || async {
            let _ = requester.p2p().connect(cheap).await;
            let peers = requester.p2p().connected_peers().await.ok()?;
            let page = requester.payments().channels(0, 100).await.ok()?;
            let idle = page
                .channels
                .iter()
                .filter(|c| c.peer == cheap_id)
                .all(|c| c.pending.is_none() && c.status != "closing");
            (peers.contains(&cheap) && idle).then_some(())
        })
        .await;
    }
    let cut = reputation_of(&requester).await[&cheap_id].clone();
    assert!(
        !cut.banned,
        "a partition got an honest provider banned: {cut:?}"
    );
    assert_eq!(cut.failures, before.failures, "{cut:?}");

    // Its next successes raise its score above where it was before the partition.
    for _ in 0..2 {
        let id = requester.market().submit(weighted()).await.unwrap();
        let t = finished(&requester, id).await;
        assert_eq!(t.status, TaskStatus::Success, "{t:?}");
        assert_eq!(t.winner.as_deref(), Some(cheap_id.as_str()), "{t:?}");
    }
    let after = reputation_of(&requester).await[&cheap_id].clone();
    assert!(!after.banned);
    assert!(
        after.score > before.score,
        "score before the partition {}, after {}: {after:?}",
        before.score,
        after.score
    );
}
