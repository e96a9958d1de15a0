//! The payment families of docs/METRICS.md (`zerostate_economic_channel*`, `payment*`,
//! `settlement*`, `dispute*`, `escrow*`) and the refusals of `zerostate_payments_*`. Every
//! label value is fixed in code except `channel_id`, capped at `metrics.max_channel_series`
//! channels ([`CappedKeys`]); a settled channel's series are removed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::wire::ChannelId;
use crate::metrics::{
    COST_BUCKETS, CappedKeys, DURATION_BUCKETS, LabelValueMetrics, OutcomeLabels, ReasonLabels,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateParty {
    state: &'static str,
    party: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelParty {
    channel_id: String,
    party: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Type {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageReason {
    message: &'static str,
    reason: &'static str,
}

/// The reasons of `zerostate_economic_channel_closes_total`.
pub const CLOSE_REASONS: [&str; 4] = ["refused", "unanswered", "idle", "drained"];

/// The reasons of `zerostate_economic_escrow_locks_failed_total`.
pub const LOCK_FAILURES: [&str; 2] = ["unusable_channel", "newcomer_share"];

/// Which party opened a channel, or made a change: this node (`local`) or its peer
/// (`remote`).
pub fn party(local: bool) -> &'static str {
    if local { "local" } else { "remote" }
}

/// The payments service's families. Owned by the payments actor.
#[derive(Debug)]
pub struct PaymentMetrics {
    channels: Family<StateParty, Counter>,
    active: Family<StateParty, Gauge>,
    channel_duration: Histogram,
    balances: Family<ChannelParty, Gauge>,
    payments: Family<Status, Counter>,
    payment_amount: Histogram,
    payment_duration: Histogram,
    settlements: Family<Status, Counter>,
    settlement_duration: Histogram,
    disputes: Family<Status, Counter>,
    escrows: Family<Type, Counter>,
    escrow_amount: Histogram,
    releases: Family<OutcomeLabels, Counter>,
    refunds: Family<ReasonLabels, Counter>,
    refused: Family<MessageReason, Counter>,
    wallet: Gauge,
    closes: Family<ReasonLabels, Counter>,
    locks_failed: Family<ReasonLabels, Counter>,
    newcomer_credit: Gauge,
    unusable: Gauge,
    series: CappedKeys<ChannelId>,
}

impl PaymentMetrics {
    /// Registers the families into `registry` (the `zerostate` registry); `channel_balances`
    /// keeps at most `max_channel_series` channels.
    pub fn register(
        registry: &mut Registry,
        max_channel_series: usize,
        labels: &LabelValueMetrics,
    ) -> Self {
        let m = Self {
            channels: Family::default(),
            active: Family::default(),
            channel_duration: Histogram::new(DURATION_BUCKETS),
            balances: Family::default(),
            payments: Family::default(),
            payment_amount: Histogram::new(COST_BUCKETS),
            payment_duration: Histogram::new(DURATION_BUCKETS),
            settlements: Family::default(),
            settlement_duration: Histogram::new(DURATION_BUCKETS),
            disputes: Family::default(),
            escrows: Family::default(),
            escrow_amount: Histogram::new(COST_BUCKETS),
            releases: Family::default(),
            refunds: Family::default(),
            refused: Family::default(),
            wallet: Gauge::default(),
            closes: Family::default(),
            locks_failed: Family::default(),
            newcomer_credit: Gauge::default(),
            unusable: Gauge::default(),
            series: CappedKeys::new(
                max_channel_series,
                labels.for_label("channel_id", max_channel_series),
            ),
        };
        let e = registry.sub_registry_with_prefix("economic");
        e.register(
            "channels",
            "Payment channel transitions, by state (opened, closing: a unilateral close started, closed: settled) and party (local: this node made the transition, remote: its peer did)",
            m.channels.clone(),
        );
        e.register(
            "channels_active",
            "Channels of this node by state (opening, open, closing) and party (local: this node opened it, remote: its peer did)",
            m.active.clone(),
        );
        e.register(
            "channel_duration_seconds",
            "Time from a channel's opening to its settlement",
            m.channel_duration.clone(),
        );
        e.register(
            "channel_balances",
            "Balance of each side (party local or remote) of each unsettled channel, for at most metrics.max_channel_series channels",
            m.balances.clone(),
        );
        e.register(
            "payments",
            "Payments (pays and escrow releases) this node proposed, by status (accepted: countersigned, rejected: refused by the peer)",
            m.payments.clone(),
        );
        e.register(
            "payment_amount",
            "Amount of each accepted payment this node made",
            m.payment_amount.clone(),
        );
        e.register(
            "payment_duration_seconds",
            "Time from proposing a payment to holding the countersigned state",
            m.payment_duration.clone(),
        );
        e.register(
            "settlements",
            "Channels settled, by status (cooperative, unilateral, disputed)",
            m.settlements.clone(),
        );
        e.register(
            "settlement_duration_seconds",
            "Time from a close being requested to the channel's settlement",
            m.settlement_duration.clone(),
        );
        e.register(
            "disputes",
            "Disputes, by status (opened: a stale close met a higher state, resolved: the channel settled on the higher state, convicted: evidence from another channel's dispute verified here)",
            m.disputes.clone(),
        );
        e.register(
            "escrows_created",
            "Escrows this node locked, by task type (pow, matmul; api for locks not made by the market)",
            m.escrows.clone(),
        );
        e.register(
            "escrow_amount",
            "Amount of each escrow this node locked",
            m.escrow_amount.clone(),
        );
        e.register(
            "escrow_releases",
            "Escrows this node released to the provider, by outcome (verified)",
            m.releases.clone(),
        );
        e.register(
            "escrow_refunds",
            "Escrows returned to this node, by reason (failed, timeout, expired, settled)",
            m.refunds.clone(),
        );
        e.register(
            "wallet_available",
            "Credit this node can still commit to channels",
            m.wallet.clone(),
        );
        e.register(
            "channel_closes",
            "Closes this node started on its own, by reason (refused: the peer refused one of its states; unanswered: the peer did not answer them; idle: no new state for payments.idle_close_secs; drained: a channel it opened holds no lock and less than one of the prices it was funded for)",
            m.closes.clone(),
        );
        e.register(
            "escrow_locks_failed",
            "Escrow locks failed before any state was sent, by reason (unusable_channel: a channel with the peer is unusable and closing; newcomer_share: a new channel would put more than payments.newcomer_share_percent of the credit with peers that never completed a task)",
            m.locks_failed.clone(),
        );
        e.register(
            "newcomer_credit",
            "Credit this node holds in unsettled channels with peers that never completed a task for it",
            m.newcomer_credit.clone(),
        );
        e.register(
            "channels_unusable",
            "Unsettled channels whose peer refused or did not answer this node's states (closing, or waiting for a release to close)",
            m.unusable.clone(),
        );
        registry.sub_registry_with_prefix("payments").register(
            "messages_refused",
            "Channel messages this node refused, by message (open, update, close: requests; frame: an undecodable request; evidence: dispute gossip; countersig, dispute: answers to its own requests) and reason",
            m.refused.clone(),
        );
        // Zero rather than absent, so "no dispute, no refund" shows as 0 on a dashboard.
        for status in ["cooperative", "unilateral", "disputed"] {
            let _ = m.settlements.get_or_create(&Status { status });
        }
        for status in ["accepted", "rejected"] {
            let _ = m.payments.get_or_create(&Status { status });
        }
        for status in ["opened", "resolved", "convicted"] {
            let _ = m.disputes.get_or_create(&Status { status });
        }
        for reason in ["failed", "timeout", "expired", "settled"] {
            let _ = m.refunds.get_or_create(&ReasonLabels { reason });
        }
        for reason in CLOSE_REASONS {
            let _ = m.closes.get_or_create(&ReasonLabels { reason });
        }
        for reason in LOCK_FAILURES {
            let _ = m.locks_failed.get_or_create(&ReasonLabels { reason });
        }
        m
    }

    /// A channel transition.
    pub fn channel(&self, state: &'static str, local: bool) {
        self.channels
            .get_or_create(&StateParty {
                state,
                party: party(local),
            })
            .inc();
    }

    /// Sets the number of channels in `state` opened by `opener_local`.
    pub fn set_active(&self, state: &'static str, opener_local: bool, count: i64) {
        self.active
            .get_or_create(&StateParty {
                state,
                party: party(opener_local),
            })
            .set(count);
    }

    /// A channel's balances changed.
    pub fn balances(&mut self, id: ChannelId, local: u64, remote: u64) {
        if let Some(evicted) = self.series.touch(id) {
            self.remove_balances(&evicted);
        }
        for (party, amount) in [("local", local), ("remote", remote)] {
            self.balances
                .get_or_create(&ChannelParty {
                    channel_id: id.to_string(),
                    party,
                })
                .set(amount.min(i64::MAX as u64) as i64);
        }
    }

    fn remove_balances(&self, id: &ChannelId) {
        for party in ["local", "remote"] {
            self.balances.remove(&ChannelParty {
                channel_id: id.to_string(),
                party,
            });
        }
    }

    /// A channel that never opened: its series go.
    pub fn forget(&mut self, id: ChannelId) {
        if self.series.remove(&id) {
            self.remove_balances(&id);
        }
    }

    /// A channel settled: its series go, and the settlement is counted.
    pub fn settled(&mut self, id: ChannelId, how: &'static str, lifetime: f64, since_close: f64) {
        if self.series.remove(&id) {
            self.remove_balances(&id);
        }
        self.settlements
            .get_or_create(&Status { status: how })
            .inc();
        self.settlement_duration.observe(since_close);
        self.channel_duration.observe(lifetime);
    }

    /// Channels with balance series.
    pub fn balance_series(&self) -> usize {
        self.series.len()
    }

    /// A payment we proposed was countersigned.
    pub fn payment_accepted(&self, amount: u64, took: f64) {
        self.payments
            .get_or_create(&Status { status: "accepted" })
            .inc();
        self.payment_amount.observe(amount as f64);
        self.payment_duration.observe(took);
    }

    /// A payment we proposed was refused.
    pub fn payment_rejected(&self) {
        self.payments
            .get_or_create(&Status { status: "rejected" })
            .inc();
    }

    /// A dispute event.
    pub fn dispute(&self, status: &'static str) {
        self.disputes.get_or_create(&Status { status }).inc();
    }

    /// An escrow we locked was countersigned.
    pub fn escrow_created(&self, kind: &'static str, amount: u64) {
        self.escrows.get_or_create(&Type { r#type: kind }).inc();
        self.escrow_amount.observe(amount as f64);
    }

    /// An escrow we locked was released.
    pub fn escrow_released(&self, outcome: &'static str) {
        self.releases
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// An escrow we locked came back.
    pub fn escrow_refunded(&self, reason: &'static str) {
        self.refunds.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// We refused a message.
    pub fn refused(&self, message: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&MessageReason { message, reason })
            .inc();
    }

    /// The wallet's available credit.
    pub fn wallet(&self, available: u64) {
        self.wallet.set(available.min(i64::MAX as u64) as i64);
    }

    /// This node started closing a channel on its own, for `reason` (one of
    /// [`CLOSE_REASONS`]).
    pub fn closed_by_us(&self, reason: &'static str) {
        self.closes.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// An escrow lock failed here, for `reason` (one of [`LOCK_FAILURES`]).
    pub fn lock_failed(&self, reason: &'static str) {
        self.locks_failed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Credit in channels with newcomers, and the number of unusable channels.
    pub fn exposure(&self, newcomer_credit: u64, unusable: usize) {
        self.newcomer_credit
            .set(newcomer_credit.min(i64::MAX as u64) as i64);
        self.unusable.set(unusable as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_series_are_capped_and_removed_on_settlement() {
        let mut registry = Registry::default();
        let mut m = PaymentMetrics::register(&mut registry, 2, &LabelValueMetrics::default());
        let ids: Vec<ChannelId> = (0..3).map(|i| ChannelId([i; 32])).collect();
        for id in &ids {
            m.balances(*id, 10, 20);
        }
        assert_eq!(m.balance_series(), 2);
        let text = crate::metrics::encode(&registry).unwrap();
        assert!(
            !text.contains(&ids[0].to_string()),
            "the oldest channel was evicted"
        );
        assert!(text.contains(&ids[2].to_string()));
        m.settled(ids[2], "cooperative", 1.0, 0.1);
        let text = crate::metrics::encode(&registry).unwrap();
        assert!(
            !text.contains(&ids[2].to_string()),
            "a settled channel loses its series"
        );
        assert_eq!(m.balance_series(), 1);
    }
}
