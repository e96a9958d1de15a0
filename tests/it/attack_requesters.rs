//! Hostile requesters against real provider nodes, played by raw libp2p swarms with their own
//! identities that speak gossipsub, the market protocol and the channel protocol by hand:
//! - slot hogging: two identities announce tasks with a huge maximum price again and again
//!   and refuse every bid, while an honest requester's tasks still get bids and succeed;
//! - replayed work: an identity announces again the id of an auction whose verified task it
//!   never paid: the provider does not execute it twice, and stops bidding for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use libp2p::gossipsub::IdentTopic;
use libp2p::identity::Keypair;
use libp2p::request_response::{self};
use libp2p::swarm::SwarmEvent;
use tokio::sync::{mpsc, oneshot};
use zerostate::NodeHandle;
use zerostate::market::wire::{
    self, AUCTIONS_TOPIC, Announcement, AuctionId, AuctionType, Award, Bid, Refusal, Request,
    Signed, TaskResult, TaskSpec, now_ms, open, sign,
};
use zerostate::market::{TaskStatus, escrow_id};
use zerostate::payments::channel::{Channel, Op};
use zerostate::payments::wire::{self as channel_wire, ChannelId, EscrowId};

use crate::common::*;
use crate::market::{market_config, pow, sum_where};
use crate::market_hostile::RawMarketBehaviourEvent;

enum Cmd {
    Publish(&'static str, Vec<u8>),
    Request(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
    ChannelRequest(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
}

/// A hostile requester: announces what it is told to, answers bids with a refusal (or
/// accepts them), accepts results, countersigns any channel state, and counts the bids.
struct Hostile {
    key: Keypair,
    id: PeerId,
    cmds: mpsc::Sender<Cmd>,
    /// Bids and results received, as (sender, frame).
    requests: mpsc::Receiver<(PeerId, Vec<u8>)>,
    bids: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    async fn spawn(targets: &[&NodeHandle], refuse_bids: bool) -> Self {
        let key = Keypair::generate_ed25519();
        let mut swarm = crate::market_hostile::market_swarm(&key, targets);
        let id = *swarm.local_peer_id();
        let (cmds, mut rx) = mpsc::channel(256);
        let (req_tx, requests) = mpsc::channel(4096);
        let bids = Arc::new(AtomicUsize::new(0));
        let counted = bids.clone();
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
                                let answer = match Request::decode(&request) {
                                    Ok(Request::Bid(_)) => {
                                        counted.fetch_add(1, Ordering::Relaxed);
                                        // A refusal that costs the refuser nothing.
                                        if refuse_bids { Err(Refusal::AuctionFull) } else { Ok(()) }
                                    }
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
            bids,
            task,
        };
        for node in targets {
            eventually(
                Duration::from_secs(30),
                "the hostile peer connects",
                || async {
                    node.p2p()
                        .connected_peers()
                        .await
                        .ok()?
                        .contains(&me.id)
                        .then_some(())
                },
            )
            .await;
        }
        me
    }

    /// Signs and publishes an announcement of a small pow task under `auction`.
    async fn announce(
        &self,
        auction: AuctionId,
        max_price: u64,
        window_ms: u64,
        execution_ms: u32,
    ) -> Signed<Announcement> {
        let now = now_ms();
        let a = sign(
            &self.key,
            Announcement {
                auction_id: auction,
                requester: self.id,
                task: TaskSpec::Pow {
                    input: b"hostile".to_vec(),
                    difficulty: 4,
                },
                max_price,
                auction_type: AuctionType::FirstPrice,
                created_at_ms: now,
                bid_deadline_ms: now + window_ms,
                reputation_weighted: false,
                execution_timeout_ms: execution_ms,
            },
        );
        self.cmds
            .send(Cmd::Publish(AUCTIONS_TOPIC, a.bytes.to_vec()))
            .await
            .unwrap();
        a
    }

    /// Sends a market frame; returns the refusal label ("" when accepted).
    async fn request(&self, peer: PeerId, frame: Vec<u8>) -> String {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Request(peer, frame, tx)).await.unwrap();
        let bytes = rx.await.unwrap().expect("the node answers");
        match wire::decode_response(&bytes).expect("a valid answer") {
            Ok(()) => String::new(),
            Err(reason) => reason,
        }
    }

    async fn channel_request(
        &self,
        peer: PeerId,
        request: &channel_wire::Request,
    ) -> (channel_wire::Response, u64) {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::ChannelRequest(peer, request.encode(), tx))
            .await
            .unwrap();
        let bytes = rx.await.unwrap().expect("the node answers");
        channel_wire::Response::decode(&bytes).unwrap()
    }

    /// Locks `amount` for `peer` under `escrow` for `ttl_ms`, in a channel of its own.
    async fn lock_escrow(&self, peer: PeerId, escrow: EscrowId, amount: u64, ttl_ms: u64) {
        let (mut channel, proposal) =
            Channel::open(&self.key, peer, ChannelId::random(), amount, 0, now_ms()).unwrap();
        let (answer, _) = self
            .channel_request(peer, &channel_wire::Request::Open(proposal))
            .await;
        let channel_wire::Response::Countersig(sig) = answer else {
            panic!("the node refused to open: {answer:?}");
        };
        channel.countersigned(&sig, now_ms()).unwrap();
        let lock = Op::Lock {
            escrow_id: escrow,
            amount,
            expires_at_ms: now_ms() + ttl_ms,
        };
        let proposal = channel.propose(&self.key, &lock, now_ms()).unwrap();
        let (answer, _) = self
            .channel_request(peer, &channel_wire::Request::Update(proposal))
            .await;
        assert!(
            matches!(answer, channel_wire::Response::Countersig(_)),
            "{answer:?}"
        );
    }

    /// The next bid for `auction` received, within `limit`.
    async fn bid_for(&mut self, auction: AuctionId, limit: Duration) -> Option<Signed<Bid>> {
        self.bids_for(&[auction], limit).await.pop()
    }

    /// One bid for each of `auctions`, in their order, as far as they came within `limit`.
    async fn bids_for(&mut self, auctions: &[AuctionId], limit: Duration) -> Vec<Signed<Bid>> {
        let mut got: Vec<Option<Signed<Bid>>> = vec![None; auctions.len()];
        let _ = tokio::time::timeout(limit, async {
            while got.iter().any(Option::is_none) {
                let (_, frame) = self.requests.recv().await.unwrap();
                if let Ok(Request::Bid(b)) = Request::decode(&frame)
                    && let Ok(b) = open::<Bid>(&b)
                    && let Some(i) = auctions.iter().position(|a| *a == b.body.auction_id)
                {
                    got[i] = Some(b);
                }
            }
        })
        .await;
        got.into_iter().flatten().collect()
    }

    /// Every bid for `auction` received so far (the others are dropped).
    fn drain_bids_for(&mut self, auction: AuctionId) -> usize {
        let mut n = 0;
        while let Ok((_, frame)) = self.requests.try_recv() {
            if let Ok(Request::Bid(b)) = Request::decode(&frame)
                && let Ok(b) = open::<Bid>(&b)
                && b.body.auction_id == auction
            {
                n += 1;
            }
        }
        n
    }

    /// Results received for any of `auctions`, within `limit`, until `n` arrived.
    async fn results(&mut self, auctions: &[AuctionId], n: usize, limit: Duration) -> usize {
        let mut got = 0;
        let _ = tokio::time::timeout(limit, async {
            while got < n {
                let (_, frame) = self.requests.recv().await.unwrap();
                if let Ok(Request::Result(r)) = Request::decode(&frame)
                    && let Ok(r) = open::<TaskResult>(&r)
                    && auctions.contains(&r.body.auction_id)
                {
                    got += 1;
                }
            }
        })
        .await;
        got
    }
}

async fn metric(node: &NodeHandle, name: &str, labels: &[&str]) -> f64 {
    sum_where(&scrape(node).await, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identities_that_refuse_every_bid_do_not_starve_honest_tasks() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Node 0 requests; nodes 1 and 2 provide with the default capacity (8 bid slots, at most
    // 4 for one requester), as in the measurement.
    let nodes = start_network(&dirs, |c| {
        let provider = c.data_dir != dirs[0].path();
        market_config(c, provider);
        c.market.provider.capacity = 2;
    })
    .await;
    let (requester, providers) = (&nodes[0], &nodes[1..]);
    let targets: Vec<&NodeHandle> = nodes.iter().collect();
    let hogs = [
        Hostile::spawn(&targets, true).await,
        Hostile::spawn(&targets, true).await,
    ];
    // The hogs announce 4 tasks each with a huge maximum price and a 60 s bid window, every
    // 2 s (30 times more often than the measurement), and refuse every bid.
    let stop = tokio_util::sync::CancellationToken::new();
    let announcing = {
        let stop = stop.clone();
        let hogs: Vec<(Keypair, mpsc::Sender<Cmd>, PeerId)> = hogs
            .iter()
            .map(|h| (h.key.clone(), h.cmds.clone(), h.id))
            .collect();
        tokio::spawn(async move {
            let mut announced = 0usize;
            while !stop.is_cancelled() {
                for (key, cmds, id) in &hogs {
                    for _ in 0..4 {
                        let now = now_ms();
                        let a = sign(
                            key,
                            Announcement {
                                auction_id: AuctionId::random(),
                                requester: *id,
                                task: TaskSpec::Pow {
                                    input: b"hog".to_vec(),
                                    difficulty: 4,
                                },
                                max_price: 1 << 40,
                                auction_type: AuctionType::FirstPrice,
                                created_at_ms: now,
                                bid_deadline_ms: now + 60_000,
                                reputation_weighted: false,
                                execution_timeout_ms: 600_000,
                            },
                        );
                        let _ = cmds
                            .send(Cmd::Publish(AUCTIONS_TOPIC, a.bytes.to_vec()))
                            .await;
                        announced += 1;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            announced
        })
    };
    // The attack is on once every provider bid on a hog's announcement.
    eventually(
        Duration::from_secs(20),
        "the providers bid to the hogs",
        || async {
            let mut all = true;
            for p in providers {
                all &=
                    metric(p, "zerostate_economic_bids_total", &["outcome=\"sent\""]).await >= 1.0;
            }
            all.then_some(())
        },
    )
    .await;

    // 20 honest tasks, two at a time.
    let stream = || async {
        let mut ok = 0;
        for _ in 0..10 {
            let id = requester
                .market()
                .submit(pow(4, AuctionType::FirstPrice))
                .await
                .unwrap();
            let view = crate::market::finished(requester, id).await;
            if view.status == TaskStatus::Success {
                ok += 1;
            } else {
                eprintln!("honest task failed: {view:#?}");
            }
        }
        ok
    };
    let (a, b) = futures::join!(stream(), stream());
    let succeeded = a + b;
    stop.cancel();
    let announced = announcing.await.unwrap();
    let hog_bids: usize = hogs.iter().map(|h| h.bids.load(Ordering::Relaxed)).sum();
    let mut backoffs = 0.0;
    for p in providers {
        backoffs += metric(
            p,
            "zerostate_market_bids_withheld_total",
            &["reason=\"backoff\""],
        )
        .await;
    }
    eprintln!(
        "slot hogging: {succeeded}/20 honest tasks succeeded; the hogs announced {announced} tasks and got {hog_bids} bids; {backoffs} withheld for back-off"
    );
    assert!(succeeded >= 19, "{succeeded} of 20 honest tasks succeeded");
    // Refusals do not make the providers bid without pause: without the back-off nearly
    // every announcement would get a bid from each provider.
    assert!(backoffs >= 1.0);
    assert!(
        hog_bids * 2 <= announced * providers.len(),
        "the hogs got {hog_bids} bids for {announced} announcements: the providers bid without pause"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_auctions_are_not_executed_twice_and_unpaid_work_stops_the_bids() {
    let dirs: Vec<_> = (0..1).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| {
        market_config(c, true);
        c.market.provider.capacity = 2;
    })
    .await;
    let provider = &nodes[0];
    let mut thief = Hostile::spawn(&[provider], false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Two tasks, awarded with their price locked for a short while, executed and verified.
    let auctions = [AuctionId::random(), AuctionId::random()];
    let mut awards = Vec::new();
    let mut announcements = Vec::new();
    for auction in auctions {
        announcements.push(thief.announce(auction, 1_000, 1_500, 2_000).await);
    }
    let bids = thief.bids_for(&auctions, Duration::from_secs(20)).await;
    assert_eq!(bids.len(), 2, "the provider bids on both");
    for ((auction, a), bid) in auctions.iter().zip(&announcements).zip(bids) {
        // Enough for a second execution's price too.
        let escrow = escrow_id(&thief.id, *auction);
        thief
            .lock_escrow(provider.peer_id(), escrow, 1_000, 6_000)
            .await;
        let award = sign(
            &thief.key,
            Award {
                announcement: a.clone(),
                price: bid.body.price,
                winner_bid: bid,
                runner_up_bid: None,
                winner_weight: 1000,
                runner_up_weight: 1000,
            },
        );
        let frame = Request::Award(award.bytes.clone()).encode();
        assert_eq!(thief.request(provider.peer_id(), frame.clone()).await, "");
        awards.push(frame);
    }
    assert_eq!(
        thief.results(&auctions, 2, Duration::from_secs(20)).await,
        2,
        "the provider executes both and delivers"
    );

    // The replay: the same auction id announced again while its lock still holds.
    let replayed = auctions[0];
    let replay = thief.announce(replayed, 1_000, 1_500, 2_000).await;
    if let Some(bid) = thief.bid_for(replayed, Duration::from_secs(3)).await {
        // It bid again: award it, under the lock that paid for the first execution.
        let award = sign(
            &thief.key,
            Award {
                announcement: replay,
                price: bid.body.price,
                winner_bid: bid,
                runner_up_bid: None,
                winner_weight: 1000,
                runner_up_weight: 1000,
            },
        );
        let frame = Request::Award(award.bytes.clone()).encode();
        let answer = thief.request(provider.peer_id(), frame).await;
        let again = thief.results(&[replayed], 1, Duration::from_secs(10)).await;
        assert_eq!(
            again, 0,
            "the provider executed the same auction twice (award answered {answer:?})"
        );
        panic!("the provider bid again on an auction it executed");
    }
    eventually(
        Duration::from_secs(10),
        "the replay is withheld",
        || async {
            (metric(
                provider,
                "zerostate_market_bids_withheld_total",
                &["reason=\"replayed\""],
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        thief.drain_bids_for(replayed),
        0,
        "the provider bid again on an auction it executed"
    );
    // The executed award itself, sent again, is refused by name.
    assert_eq!(
        thief.request(provider.peer_id(), awards[0].clone()).await,
        "replay"
    );
    assert_eq!(
        thief.results(&[replayed], 1, Duration::from_secs(3)).await,
        0,
        "executed twice"
    );

    // The locks expire unreleased: the provider stops bidding for the thief.
    eventually(
        Duration::from_secs(20),
        "both awards judged unpaid",
        || async {
            let text = scrape(provider).await;
            (sum_where(
                &text,
                "zerostate_market_awards_settled_total",
                &["outcome=\"unpaid\""],
            ) >= 2.0)
                .then_some(())
        },
    )
    .await;
    let fresh = AuctionId::random();
    thief.announce(fresh, 1_000, 1_500, 2_000).await;
    assert!(
        thief.bid_for(fresh, Duration::from_secs(3)).await.is_none(),
        "the provider still bids for a requester that does not pay"
    );
    assert_eq!(
        metric(provider, "zerostate_market_requesters_penalised", &[]).await,
        1.0
    );
    eventually(
        Duration::from_secs(10),
        "the next announcement is withheld",
        || async {
            (metric(
                provider,
                "zerostate_market_bids_withheld_total",
                &["reason=\"penalty\""],
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_pays_is_judged_paid_and_keeps_its_bids() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Short time limits, so the escrows expire (and are judged) within the test.
    let nodes = start_network(&dirs, |c| {
        let provider = c.data_dir != dirs[0].path();
        market_config(c, provider);
        c.market.provider.capacity = 2;
        c.market.award_timeout_ms = 2_000;
        c.market.execution_timeout_ms = 2_000;
        c.market.verify_timeout_ms = 2_000;
    })
    .await;
    let (requester, provider) = (&nodes[0], &nodes[1]);
    for _ in 0..3 {
        let id = requester
            .market()
            .submit(pow(4, AuctionType::FirstPrice))
            .await
            .unwrap();
        let view = crate::market::finished(requester, id).await;
        assert_eq!(view.status, TaskStatus::Success, "{view:#?}");
    }
    eventually(
        Duration::from_secs(30),
        "the three awards judged paid",
        || async {
            let paid = metric(
                provider,
                "zerostate_market_awards_settled_total",
                &["outcome=\"paid\""],
            )
            .await;
            (paid >= 3.0).then_some(())
        },
    )
    .await;
    let text = scrape(provider).await;
    assert_eq!(
        sum_where(
            &text,
            "zerostate_market_awards_settled_total",
            &["outcome=\"unpaid\""]
        ),
        0.0
    );
    assert_eq!(
        sum_where(&text, "zerostate_market_requesters_penalised", &[]),
        0.0
    );
    let id = requester
        .market()
        .submit(pow(4, AuctionType::FirstPrice))
        .await
        .unwrap();
    let view = crate::market::finished(requester, id).await;
    assert_eq!(view.winner, Some(provider.peer_id().to_string()));
    for n in nodes {
        n.shutdown().await;
    }
}
