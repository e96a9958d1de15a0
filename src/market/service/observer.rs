//! The observer's side: the market's gossip. Announcements are checked and handed to the
//! provider; published auction results are verified and remembered, so any node can say who
//! won an auction at what price (`MarketService::observed`).

use super::{MarketActor, Observed, verdict};
use crate::market::auction::verify_award;
use crate::market::wire::{AUCTIONS_TOPIC, Announcement, Award, RESULTS_TOPIC, now_ms, open};
use crate::p2p::{GossipMessage, Verdict};

impl MarketActor {
    pub(super) fn on_gossip(&mut self, message: GossipMessage) {
        let verdict = match message.topic {
            AUCTIONS_TOPIC => self.on_announcement(&message.data),
            RESULTS_TOPIC => self.on_auction_result(&message.data),
            _ => Verdict::Reject,
        };
        let _ = message.verdict.send(verdict);
    }

    fn on_announcement(&mut self, data: &[u8]) -> Verdict {
        let announcement =
            open::<Announcement>(data).and_then(|a| a.body.check_fresh(now_ms()).map(|()| a));
        let announcement = match announcement {
            Ok(a) => a,
            Err(r) => {
                self.metrics.refused("announcement", r.label());
                return verdict(r);
            }
        };
        if announcement.body.requester != self.local {
            self.consider_bidding(announcement);
        }
        Verdict::Accept
    }

    fn on_auction_result(&mut self, data: &[u8]) -> Verdict {
        let award = open::<Award>(data)
            .and_then(|a| a.body.check_fresh(now_ms()).map(|()| a))
            .and_then(|a| verify_award(&a.body).map(|()| a));
        let award = match award {
            Ok(a) => a,
            Err(r) => {
                self.metrics.refused("award", r.label());
                return verdict(r);
            }
        };
        let key = (award.signer, award.body.auction_id());
        if self.observed.contains(&key) {
            return Verdict::Ignore;
        }
        self.record_observed(&award.body);
        self.bid_lost_to(&award.body);
        Verdict::Accept
    }

    /// Remembers who won an auction at what price.
    pub(super) fn record_observed(&mut self, award: &Award) {
        self.observed.put(
            (award.announcement.body.requester, award.auction_id()),
            Observed {
                winner: award.winner(),
                price: award.price,
            },
        );
    }
}
