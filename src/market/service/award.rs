//! The award: when an auction's bid window closes, the requester selects the winner, locks
//! its price in escrow, and sends it the signed award; once the winner accepts, the award is
//! published as the auction's result. Locking and delivering share the award's time limit.
//!
//! Every way the exchange can fail is attributed ([`AttemptError::fault`]): this node's own
//! wallet or payments failing is its own doing; a winner that refuses the lock or the award,
//! or stays silent on a live connection, is at fault; a winner that cannot be reached at all
//! gets a strike. Bids on probation are left out at the close by [`AuctionBook::select_under`]
//! (crate::market::auction::AuctionBook::select_under).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::requester::Phase;
use super::{Job, MarketActor, Timer, after, escrow_id};
use crate::market::auction::Probation;
use crate::market::kinds::TaskKind;
use crate::market::task::AttemptError;
use crate::market::wire::{
    self, AuctionId, Award, NEUTRAL_WEIGHT, RESULTS_TOPIC, Request, now_ms, sign,
};
use crate::p2p::{Market, P2pHandle};
use crate::payments::PaymentsError;

/// An award sent less than this long before the winning bid expires counts as late: the
/// winner may refuse it without blame. The margin covers the award's way to the winner and
/// the skew between the two clocks, so that an honest winner whose bid lapses while the
/// award travels is not blamed for it.
pub(super) const LATE_MARGIN_MS: u64 = 2_000;

/// Whether an award sent at `now_ms` to a bid expiring at `expires_at_ms` is late: a
/// refusal of it is then this node's doing, not the winner's.
fn award_is_late(now_ms: u64, expires_at_ms: u64) -> bool {
    now_ms.saturating_add(LATE_MARGIN_MS) > expires_at_ms
}

/// Whether the winner is still connected to this node: if so, its silence is its own doing;
/// if not, it could not be reached (a partition looks the same).
async fn still_connected(p2p: &P2pHandle, winner: libp2p::PeerId) -> bool {
    p2p.connected_peers()
        .await
        .is_ok_and(|peers| peers.contains(&winner))
}

/// Whether a failed escrow lock was this node's side (its wallet, its payments service)
/// rather than the winner's answer.
fn escrow_failed_ours(e: &PaymentsError) -> bool {
    match e {
        PaymentsError::Refused(_) | PaymentsError::Pending(_) => false,
        PaymentsError::Channel(_)
        | PaymentsError::InsufficientFunds { .. }
        | PaymentsError::UnknownChannel
        | PaymentsError::Ledger(_)
        | PaymentsError::Stopped
        | PaymentsError::Busy
        // The market's own locks carry no payment id and never open twice by request.
        | PaymentsError::PaymentIdReused { .. }
        | PaymentsError::InvalidPaymentId(_)
        | PaymentsError::NewcomerShare { .. }
        // Our channel with the winner is being closed after an earlier failure, which was
        // judged when it happened (a refusal, silence, or a partition): the lock fails on
        // our side without asking the winner, and blaming it again would count a partition
        // twice.
        | PaymentsError::ChannelUnusable { .. } => true,
        // Our earlier open to the winner still waits for its countersignature (the lock's
        // caller looks whether the winner is connected before blaming it).
        PaymentsError::OpenPending { .. } => false,
    }
}

impl MarketActor {
    /// The bid window closed: award the winner (lock its price in escrow, then send the
    /// award), or fail the attempt without bids.
    pub(super) fn close_auction(&mut self, auction: AuctionId) {
        let Some(running) = self.running.get(&auction) else {
            return;
        };
        let announcement = running.book.announcement().clone();
        let auction_type = announcement.auction_type.label();
        let task = running.task;
        let rule = Probation {
            max_awards: self.config.probation_max_awards,
            proven_only: self
                .tasks
                .get(&task)
                .is_some_and(|t| t.lifecycle_proven_only()),
        };
        let now = now_ms();
        let (selection, left_out) = running.book.select_under(rule, |p| self.standing(p, now));
        for (bidder, reason) in &left_out {
            self.metrics.probation_bid_left_out(reason.label());
            tracing::debug!(%auction, %bidder, reason = reason.label(), "bid on probation left out");
        }
        let Some(selection) = selection else {
            self.metrics.auction(auction_type, "failed");
            let detail = if left_out.is_empty() {
                format!(
                    "no provider bid at or below max_price {} within {} ms. A provider bids only \
                     while it has a free worker and its own price for the task (its base_price, \
                     10 by default, plus its unit_price per unit of work) is at most max_price: \
                     try a higher max price, or check that providers offer this kind",
                    announcement.max_price, self.config.bid_window_ms
                )
            } else {
                format!(
                    "only providers on probation bid, and each already holds \
                     market.probation_max_awards = {} of this node's awards",
                    self.config.probation_max_awards
                )
            };
            self.attempt_failed_because(auction, AttemptError::NoBids, detail);
            return;
        };
        let Some(running) = self.running.get_mut(&auction) else {
            return;
        };
        self.metrics
            .auction_closed_after(running.announced_at.elapsed().as_secs_f64());
        self.metrics.auction(auction_type, "closed");
        let winner = selection.winner.bid.body.bidder;
        let award = Award {
            announcement: running.signed.clone(),
            winner_bid: selection.winner.bid.clone(),
            runner_up_bid: selection.runner_up.as_ref().map(|e| e.bid.clone()),
            price: selection.price,
            winner_weight: selection.winner.weight,
            runner_up_weight: selection
                .runner_up
                .as_ref()
                .map_or(NEUTRAL_WEIGHT, |e| e.weight),
        };
        running.phase = Phase::Awarded {
            winner,
            price: selection.price,
            awarded_at: Instant::now(),
        };
        let signed = sign(&self.key, award);
        self.record_observed(&signed.body);
        if let Some(t) = self.tasks.get_mut(&task) {
            if let Some(a) = t.attempt(auction) {
                a.winner = Some(winner.to_string());
                a.price = Some(selection.price);
            }
            t.log(format!(
                "auction {auction} closed: {winner} wins at {}",
                selection.price
            ));
        }
        // The award goes to the winner first, then to everyone as the auction's result (so
        // the winner's copy does not queue behind the gossip).
        let p2p = self.p2p.clone();
        let award = signed.bytes.clone();
        let winner_expires_ms = selection.winner.bid.body.expires_at_ms;
        let frame = Request::Award(signed.bytes).encode();
        let limit = Duration::from_millis(self.config.award_timeout_ms);
        // The price is locked in escrow before the award goes out: the winner checks it
        // before executing. It may be refunded once the task's time is up.
        let payments = self.payments.clone();
        let escrow = escrow_id(&self.local, auction);
        let price = selection.price;
        let kind = TaskKind::of(&announcement.task).label();
        let expires_at_ms = now_ms() + self.config.escrow_ttl_ms(announcement.execution_timeout_ms);
        self.jobs.spawn(async move {
            // Locking and delivering share the award's time limit, so the result deadline
            // (award + execution time) leaves the winner its whole execution time.
            let started = tokio::time::Instant::now();
            let locked = tokio::time::timeout(
                limit,
                payments.lock(winner, escrow, price, expires_at_ms, kind),
            )
            .await;
            let refused = match locked {
                Ok(Ok(())) => None,
                // Not countersigned in time: silence on a live connection is the winner's
                // doing; a winner we cannot reach gets a strike.
                // Our channel with the winner is being closed after failed sends: a winner
                // we cannot reach gets a strike; one we can was judged when the channel
                // failed, so the lock fails on our side (see `escrow_failed_ours`).
                Ok(Err(e @ PaymentsError::ChannelUnusable { .. })) => {
                    if still_connected(&p2p, winner).await {
                        Some((AttemptError::EscrowFailed { ours: true }, e.to_string()))
                    } else {
                        Some((
                            AttemptError::Unreachable { connected: false },
                            "the winner could not be reached with the lock".to_owned(),
                        ))
                    }
                }
                Ok(Err(PaymentsError::Pending(_) | PaymentsError::OpenPending { .. })) | Err(_) => {
                    if still_connected(&p2p, winner).await {
                        Some((
                            AttemptError::EscrowFailed { ours: false },
                            "the lock was not countersigned in time".to_owned(),
                        ))
                    } else {
                        Some((
                            AttemptError::Unreachable { connected: false },
                            "the winner could not be reached with the lock".to_owned(),
                        ))
                    }
                }
                Ok(Err(e)) => Some((
                    AttemptError::EscrowFailed {
                        ours: escrow_failed_ours(&e),
                    },
                    e.to_string(),
                )),
            };
            if let Some(error) = refused {
                return Job::AwardDelivered {
                    auction,
                    task,
                    award,
                    result: Err(error),
                };
            }
            let limit = limit.saturating_sub(started.elapsed());
            // A winner may refuse an award sent after its bid expired, or so close to it that
            // the bid may lapse on the way.
            let late = award_is_late(now_ms(), winner_expires_ms);
            let deliver = async {
                // The bid's connection may have closed since: find the winner again.
                p2p.connect(winner)
                    .await
                    .map_err(crate::p2p::RequestError::Failed)?;
                p2p.request::<Market>(winner, frame).await
            };
            let refused = AttemptError::AwardRefused { late };
            let result = match tokio::time::timeout(limit, deliver).await {
                Err(_) => {
                    let connected = still_connected(&p2p, winner).await;
                    let error = AttemptError::Unreachable { connected };
                    Err((error, "no answer in time".to_owned()))
                }
                Ok(Err(e)) => {
                    let connected = still_connected(&p2p, winner).await;
                    Err((AttemptError::Unreachable { connected }, e.to_string()))
                }
                Ok(Ok(bytes)) => match wire::decode_response(&bytes) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(reason)) => Err((refused, reason)),
                    Err(e) => Err((refused, e.to_string())),
                },
            };
            Job::AwardDelivered {
                auction,
                task,
                award,
                result,
            }
        });
        let deadline = Duration::from_millis(
            u64::from(self.config.execution_timeout_ms) + self.config.award_timeout_ms,
        );
        self.jobs
            .spawn(after(deadline, Timer::ResultDeadline(auction)));
    }

    pub(super) fn award_delivered(
        &mut self,
        auction: AuctionId,
        task: AuctionId,
        award: Bytes,
        result: Result<(), (AttemptError, String)>,
    ) {
        match result {
            Ok(()) => {
                // Losers and observers learn the outcome once the winner took the award.
                self.publish(RESULTS_TOPIC, award);
                // The result may already be in: log into the task, not the auction.
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.log(format!("award accepted (auction {auction})"));
                }
            }
            Err((error, detail)) => {
                if self.awaiting_result(auction) {
                    tracing::debug!(%auction, error = error.label(), detail, "award not accepted");
                    self.attempt_failed_because(auction, error, detail);
                }
            }
        }
    }

    pub(super) fn awaiting_result(&self, auction: AuctionId) -> bool {
        matches!(
            self.running.get(&auction).map(|r| &r.phase),
            Some(Phase::Awarded { .. })
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::Funds;

    #[test]
    fn a_lock_the_winner_does_not_take_is_not_ours() {
        for theirs in [
            PaymentsError::Refused("no".into()),
            PaymentsError::Pending(None),
            PaymentsError::OpenPending {
                channel: crate::payments::wire::ChannelId([0; 32]),
                peer: "p".into(),
                payment_id: None,
            },
        ] {
            assert!(!escrow_failed_ours(&theirs), "{theirs:?}");
        }
        for ours in [
            PaymentsError::InsufficientFunds {
                place: Funds::Wallet,
                available: 0,
                requested: 1,
            },
            PaymentsError::Stopped,
            PaymentsError::Busy,
            PaymentsError::UnknownChannel,
        ] {
            assert!(escrow_failed_ours(&ours), "{ours:?}");
        }
    }

    #[test]
    fn an_award_is_late_with_a_margin_for_its_way() {
        // The built-in provider's bid stays open 8 s past the deadline; an award sent within
        // the default award timeout (5 s) is never late.
        let deadline = 1_000_000;
        let expires = deadline + 8_000;
        assert!(!award_is_late(deadline + 5_000, expires));
        assert!(!award_is_late(expires - LATE_MARGIN_MS, expires));
        assert!(award_is_late(expires - LATE_MARGIN_MS + 1, expires));
        assert!(award_is_late(expires + 1, expires));
        assert!(!award_is_late(0, u64::MAX));
    }
}
