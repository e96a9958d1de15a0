//! The market's metric families: the auction, bid, task and reputation rows of
//! docs/METRICS.md (`zerostate_economic_*`), and the refusals of `zerostate_market_*`.
//! Every label value is fixed in code except `peer_id`, which is capped at
//! `metrics.max_peer_series` peers ([`CappedKeys`]).

use libp2p::PeerId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::reputation::Record;
use crate::metrics::{COST_BUCKETS, CappedKeys, DURATION_BUCKETS, LabelValueMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeStatus {
    r#type: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeOutcome {
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeError {
    r#type: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageReason {
    message: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn cost_histogram() -> Histogram {
    Histogram::new(COST_BUCKETS)
}

/// The market's families. Owned by the market actor.
#[derive(Debug)]
pub struct MarketMetrics {
    auctions: Family<TypeStatus, Counter>,
    bids: Family<TypeOutcome, Counter>,
    bid_amount: Histogram,
    auction_duration: Histogram,
    tasks_submitted: Family<TypeLabel, Counter>,
    tasks_completed: Family<TypeStatus, Counter>,
    task_duration: Family<TypeLabel, Histogram, fn() -> Histogram>,
    task_cost: Family<TypeLabel, Histogram, fn() -> Histogram>,
    task_errors: Family<TypeError, Counter>,
    reputation_scores: Family<PeerLabel, FloatGauge>,
    tasks_executed: Family<PeerLabel, Counter>,
    success_rate: Family<PeerLabel, FloatGauge>,
    average_task_duration: Family<PeerLabel, FloatGauge>,
    average_task_cost: Family<PeerLabel, FloatGauge>,
    refused: Family<MessageReason, Counter>,
    withheld: Family<ReasonLabel, Counter>,
    settled: Family<OutcomeLabel, Counter>,
    penalised: Gauge,
    on_probation: Gauge,
    probation_bids: Family<ReasonLabel, Counter>,
    peers: CappedKeys<PeerId>,
}

impl MarketMetrics {
    /// Registers the families into `registry` (the `zerostate` registry); peer-labelled
    /// families keep at most `max_peer_series` peers.
    pub fn register(
        registry: &mut Registry,
        max_peer_series: usize,
        labels: &LabelValueMetrics,
    ) -> Self {
        let m = Self {
            auctions: Family::default(),
            bids: Family::default(),
            bid_amount: cost_histogram(),
            auction_duration: duration_histogram(),
            tasks_submitted: Family::default(),
            tasks_completed: Family::default(),
            task_duration: Family::new_with_constructor(duration_histogram),
            task_cost: Family::new_with_constructor(cost_histogram),
            task_errors: Family::default(),
            reputation_scores: Family::default(),
            tasks_executed: Family::default(),
            success_rate: Family::default(),
            average_task_duration: Family::default(),
            average_task_cost: Family::default(),
            refused: Family::default(),
            withheld: Family::default(),
            settled: Family::default(),
            penalised: Gauge::default(),
            on_probation: Gauge::default(),
            probation_bids: Family::default(),
            peers: CappedKeys::new(
                max_peer_series,
                labels.for_label("peer_id", max_peer_series),
            ),
        };
        let e = registry.sub_registry_with_prefix("economic");
        e.register(
            "auctions",
            "Auctions this node ran, by type (first_price, second_price) and status (created, closed: a winner was selected, completed: its task was verified, failed: no bids or its task failed)",
            m.auctions.clone(),
        );
        e.register(
            "bids",
            "Bids, by auction type and outcome (as bidder: sent = delivered to the requester, undelivered, won, lost; as requester: accepted, refused)",
            m.bids.clone(),
        );
        e.register(
            "bid_amount",
            "Price of each bid this node accepted as requester",
            m.bid_amount.clone(),
        );
        e.register(
            "auction_duration_seconds",
            "Time from announcing an auction to selecting its winner",
            m.auction_duration.clone(),
        );
        e.register(
            "tasks_submitted",
            "Tasks submitted to the market by this node, by type (pow, matmul)",
            m.tasks_submitted.clone(),
        );
        e.register(
            "tasks_completed",
            "Tasks of this node that ended, by type and status (success, failed, timeout)",
            m.tasks_completed.clone(),
        );
        e.register(
            "task_duration_seconds",
            "Execution time of each task this node executed as provider, by type",
            m.task_duration.clone(),
        );
        e.register(
            "task_cost",
            "Price paid for each task of this node that succeeded, by type",
            m.task_cost.clone(),
        );
        e.register(
            "task_errors",
            "Failed task attempts of this node, by type and error (no_bids, escrow_failed, award_refused, unreachable, timeout, wrong_result, fetch_failed, verify_timeout, verify_failed, input_failed)",
            m.task_errors.clone(),
        );
        e.register(
            "reputation_scores",
            "This node's reputation score (0..1, neutral 0.5) of each peer (capped)",
            m.reputation_scores.clone(),
        );
        e.register(
            "tasks_executed",
            "Tasks each peer finished for this node, successfully or not (capped)",
            m.tasks_executed.clone(),
        );
        e.register(
            "success_rate",
            "Share of each peer's tasks for this node that verified (capped)",
            m.success_rate.clone(),
        );
        e.register(
            "average_task_duration",
            "Mean time from award to verified result, or to failure, of each peer's tasks, seconds (capped)",
            m.average_task_duration.clone(),
        );
        e.register(
            "average_task_cost",
            "Mean price of each peer's successful tasks (capped)",
            m.average_task_cost.clone(),
        );
        let market = registry.sub_registry_with_prefix("market");
        market.register(
            "messages_refused",
            "Market messages refused, by message (announcement, bid, award, result, request) and reason; see docs/PROTOCOL.md",
            m.refused.clone(),
        );
        market.register(
            "bids_withheld",
            "Announcements this node as provider did not bid on because of the requester, by reason (backoff, penalty, bid_share, worker_share, replayed)",
            m.withheld.clone(),
        );
        market.register(
            "awards_settled",
            "Awards this node executed, judged at their escrow's expiry, by outcome (paid, unpaid, undelivered)",
            m.settled.clone(),
        );
        market.register(
            "requesters_penalised",
            "Requesters this node as provider gives no bids to for now (lapsed bids or unpaid awards)",
            m.penalised.clone(),
        );
        market.register(
            "peers_on_probation",
            "Providers without a verified result for this node that bid in its open auctions or hold its awards",
            m.on_probation.clone(),
        );
        market.register(
            "probation_bids",
            "Bids of providers on probation left out when this node's auction closed, by reason (quota: it held its share of awards; proven_first: a newcomer failed the task and a proven provider bid; failed_before: it failed a task of this node already and another provider bid)",
            m.probation_bids.clone(),
        );
        for reason in super::auction::LeftOut::ALL {
            let _ = m.probation_bids.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        m
    }

    /// Providers on probation in this node's open auctions now.
    pub fn peers_on_probation(&self, n: usize) {
        self.on_probation.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A bid on probation was left out at the close, for `reason`.
    pub fn probation_bid_left_out(&self, reason: &'static str) {
        self.probation_bids
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// An auction of `auction_type` changed status.
    pub fn auction(&self, auction_type: &'static str, status: &'static str) {
        let c = self.auctions.get_or_create(&TypeStatus {
            r#type: auction_type,
            status,
        });
        c.inc();
    }

    /// A bid changed hands.
    pub fn bid(&self, auction_type: &'static str, outcome: &'static str) {
        let c = self.bids.get_or_create(&TypeOutcome {
            r#type: auction_type,
            outcome,
        });
        c.inc();
    }

    /// The price of a bid accepted as requester.
    pub fn bid_amount(&self, price: u64) {
        self.bid_amount.observe(price as f64);
    }

    /// An auction closed `secs` after its announcement.
    pub fn auction_closed_after(&self, secs: f64) {
        self.auction_duration.observe(secs);
    }

    /// A task of `kind` was submitted.
    pub fn task_submitted(&self, kind: &'static str) {
        self.tasks_submitted
            .get_or_create(&TypeLabel { r#type: kind })
            .inc();
    }

    /// A task of `kind` ended with `status`; `cost` is the price paid on success.
    pub fn task_completed(&self, kind: &'static str, status: &'static str, cost: Option<u64>) {
        self.tasks_completed
            .get_or_create(&TypeStatus {
                r#type: kind,
                status,
            })
            .inc();
        if let Some(cost) = cost {
            self.task_cost
                .get_or_create(&TypeLabel { r#type: kind })
                .observe(cost as f64);
        }
    }

    /// This node executed a task of `kind` in `secs`.
    pub fn task_executed(&self, kind: &'static str, secs: f64) {
        self.task_duration
            .get_or_create(&TypeLabel { r#type: kind })
            .observe(secs);
    }

    /// An attempt at a task of `kind` failed with `error`.
    pub fn task_error(&self, kind: &'static str, error: &'static str) {
        self.task_errors
            .get_or_create(&TypeError {
                r#type: kind,
                error,
            })
            .inc();
    }

    /// A bid was withheld from a requester for `reason`.
    pub fn withheld(&self, reason: &'static str) {
        self.withheld.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// An executed award's escrow expired with `outcome`.
    pub fn settled(&self, outcome: &'static str) {
        self.settled.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Requesters penalised now.
    pub fn requesters_penalised(&self, n: usize) {
        self.penalised.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A message was refused.
    pub fn refused(&self, message: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&MessageReason { message, reason })
            .inc();
    }

    /// A peer finished a task for us; its record is now `record`.
    pub fn peer_record(&mut self, peer: PeerId, record: &Record) {
        if let Some(evicted) = self.peers.touch(peer) {
            self.remove_peer_series(&evicted);
        }
        let label = PeerLabel {
            peer_id: peer.to_string(),
        };
        self.reputation_scores
            .get_or_create(&label)
            .set(record.score);
        self.tasks_executed.get_or_create(&label).inc();
        self.success_rate
            .get_or_create(&label)
            .set(record.success_rate());
        self.average_task_duration
            .get_or_create(&label)
            .set(record.mean_duration_secs());
        self.average_task_cost
            .get_or_create(&label)
            .set(record.mean_cost());
    }

    /// A peer's score changed without a task ending (decay, a protocol violation).
    pub fn peer_score(&mut self, peer: PeerId, score: f64) {
        if let Some(evicted) = self.peers.touch(peer) {
            self.remove_peer_series(&evicted);
        }
        let label = PeerLabel {
            peer_id: peer.to_string(),
        };
        self.reputation_scores.get_or_create(&label).set(score);
    }

    /// Refreshes a tracked peer's score gauge (decay) without counting it as active.
    pub fn refresh_score(&self, peer: PeerId, score: f64) {
        if self.peers.contains(&peer) {
            let label = PeerLabel {
                peer_id: peer.to_string(),
            };
            self.reputation_scores.get_or_create(&label).set(score);
        }
    }

    /// The peers that have series now.
    pub fn tracked_peers(&self) -> Vec<PeerId> {
        self.peers.keys()
    }

    fn remove_peer_series(&self, peer: &PeerId) {
        let label = PeerLabel {
            peer_id: peer.to_string(),
        };
        self.reputation_scores.remove(&label);
        self.tasks_executed.remove(&label);
        self.success_rate.remove(&label);
        self.average_task_duration.remove(&label);
        self.average_task_cost.remove(&label);
    }

    /// How many peers have series.
    pub fn peer_series(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn peers_in(text: &str, family: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.split("peer_id=\"").nth(1)?.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn peer_series_are_capped_and_the_least_recently_active_peer_goes() {
        let mut registry = Registry::default();
        let mut m = MarketMetrics::register(&mut registry, 3, &LabelValueMetrics::default());
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let record = Record::default();
        for p in &peers {
            m.peer_record(*p, &record);
            m.task_completed("pow", "success", Some(10));
        }
        // Peer 2 is active again: peer 3 is now the least recently active.
        m.peer_record(peers[2], &record);
        m.peer_record(PeerId::random(), &record);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let want: BTreeSet<String> = [peers[2], peers[4]].iter().map(|p| p.to_string()).collect();
        for family in [
            "economic_reputation_scores",
            "economic_tasks_executed_total",
            "economic_success_rate",
            "economic_average_task_duration",
            "economic_average_task_cost",
        ] {
            let got = peers_in(&text, family);
            assert_eq!(got.len(), 3, "{family}: {got:?}");
            assert!(want.is_subset(&got), "{family}: {got:?}");
        }
        assert_eq!(m.peer_series(), 3);
        // Aggregates count every event.
        assert!(
            text.contains(r#"economic_tasks_completed_total{type="pow",status="success"} 5"#),
            "{text}"
        );
    }
}
