//! The auction book: which bids an auction takes, who wins, what the winner is paid, and the
//! check anyone can run on an award. Pure: no I/O, no clock (time is passed in).
//!
//! **Selection.** Each bid has a weight `w` in per mille (500..=1500): `1000` when the
//! auction is not reputation-weighted, otherwise [`weight_for`] of the requester's score of
//! the bidder. The bid with the lowest `price × w` wins; ties go to the lower weight (the
//! better reputation), then to the earlier bid.
//!
//! **Price.** First price: the winner's own bid. Second price: the critical price, the highest
//! bid with which the winner would still have won, `⌊runner_up.price × w_r / w_w⌋`, capped at
//! the maximum price; with a single bid, the maximum price. Without weighting this is the
//! runner-up's bid.
//!
//! **Probation.** A bidder with no verified result for this requester is on probation: its
//! weight is at least `probation_weight` ([`bidder_weight`]), and at the close
//! ([`AuctionBook::select_under`]) its bid is left out when it already holds
//! `max_awards` of this requester's awards, and when the task's last winner on probation
//! failed it and a proven provider bid. Leaving bids out happens before the selection: the
//! rule above then runs on the remaining bids, so the award still verifies from its own
//! signed bids and weights ([`verify_award`]).

use std::collections::HashSet;

use libp2p::PeerId;

use super::wire::{
    Announcement, AuctionType, Award, Bid, MAX_BID_TTL_MS, MAX_BIDS_PER_AUCTION, NEUTRAL_WEIGHT,
    Refusal, Signed, WEIGHT,
};

/// The weight (per mille) of a bidder with reputation `score` in `[0, 1]`: 500 for a perfect
/// score, 1000 for a neutral one (0.5), 1500 for the worst.
pub fn weight_for(score: f64) -> u32 {
    let w = (1000.0 * (1.5 - score.clamp(0.0, 1.0))).round() as u32;
    w.clamp(*WEIGHT.start(), *WEIGHT.end())
}

/// The weight of a bidder: [`weight_for`] its score, and at least `probation_weight` while it
/// is on probation (no verified result for this requester yet), so a newcomer starts worse
/// than neutral.
pub fn bidder_weight(score: f64, on_probation: bool, probation_weight: u32) -> u32 {
    let w = weight_for(score);
    if on_probation {
        w.max(probation_weight.clamp(*WEIGHT.start(), *WEIGHT.end()))
    } else {
        w
    }
}

/// How a bidder stands with this requester when its auction closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It delivered at least one verified result to this requester.
    Proven,
    /// No verified result yet; it holds `awards_held` of this requester's awards now.
    Probation {
        /// Awards of this requester it holds (awarded, not yet ended).
        awards_held: usize,
        /// It already failed a task of this requester by its doing: it gets a task only
        /// when no other provider bid.
        failed: bool,
    },
}

/// The probation rule an auction closes under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probation {
    /// Most awards of this requester a bidder on probation may hold at once.
    pub max_awards: usize,
    /// A winner on probation failed this task: bidders on probation are left out whenever a
    /// proven provider bid.
    pub proven_only: bool,
}

/// Why a bid was left out at the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeftOut {
    /// Its bidder on probation already holds its share of awards.
    Quota,
    /// A proven provider bid on a task a bidder on probation failed.
    ProvenFirst,
    /// Its bidder on probation already failed a task of this requester, and another
    /// provider bid.
    FailedBefore,
}

impl LeftOut {
    /// Every reason.
    pub const ALL: [LeftOut; 3] = [Self::Quota, Self::ProvenFirst, Self::FailedBefore];

    /// The `reason` label of `zerostate_market_probation_bids_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Quota => "quota",
            Self::ProvenFirst => "proven_first",
            Self::FailedBefore => "failed_before",
        }
    }
}

/// A bid the book accepted, with its weight and arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The signed bid.
    pub bid: Signed<Bid>,
    /// Its weight, per mille.
    pub weight: u32,
    /// Arrival order within the auction (0 = first).
    pub seq: u64,
}

impl Entry {
    fn cost(&self) -> u128 {
        u128::from(self.bid.body.price) * u128::from(self.weight)
    }
}

/// Who won and at what price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The winning entry.
    pub winner: Entry,
    /// The next best entry, if any.
    pub runner_up: Option<Entry>,
    /// What the winner is paid.
    pub price: u64,
}

/// The price rule, shared by selection and verification.
pub fn price(
    auction_type: AuctionType,
    max_price: u64,
    winner: (u64, u32),
    runner_up: Option<(u64, u32)>,
) -> u64 {
    match (auction_type, runner_up) {
        (AuctionType::FirstPrice, _) => winner.0,
        (AuctionType::SecondPrice, None) => max_price,
        (AuctionType::SecondPrice, Some((price, weight))) => {
            let critical = u128::from(price) * u128::from(weight) / u128::from(winner.1.max(1));
            u64::try_from(critical.min(u128::from(max_price))).unwrap_or(max_price)
        }
    }
}

/// Picks the winner and runner-up among `entries` and prices the award.
pub fn select(announcement: &Announcement, entries: &[Entry]) -> Option<Selection> {
    let mut ranked: Vec<&Entry> = entries.iter().collect();
    ranked.sort_by_key(|e| (e.cost(), e.weight, e.seq));
    let winner = (*ranked.first()?).clone();
    let runner_up = ranked.get(1).map(|e| (*e).clone());
    let price = price(
        announcement.auction_type,
        announcement.max_price,
        (winner.bid.body.price, winner.weight),
        runner_up.as_ref().map(|e| (e.bid.body.price, e.weight)),
    );
    Some(Selection {
        winner,
        runner_up,
        price,
    })
}

/// The bids of one auction this node runs, with the checks that keep them honest.
#[derive(Debug)]
pub struct AuctionBook {
    announcement: Announcement,
    entries: Vec<Entry>,
    /// Hashes of every bid envelope received, for the auction's lifetime.
    seen: HashSet<blake3::Hash>,
    bidders: HashSet<PeerId>,
    excluded: HashSet<PeerId>,
}

impl AuctionBook {
    /// A book for `announcement`; bids from `excluded` peers are refused.
    pub fn new(announcement: Announcement, excluded: HashSet<PeerId>) -> Self {
        Self {
            announcement,
            entries: Vec::new(),
            seen: HashSet::new(),
            bidders: HashSet::new(),
            excluded,
        }
    }

    /// The auction.
    pub fn announcement(&self) -> &Announcement {
        &self.announcement
    }

    /// The bids taken so far.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Offers a bid received at `now_ms`. `weight` is the bidder's weight if the auction is
    /// reputation-weighted (ignored otherwise). Refused bids change nothing.
    pub fn offer(&mut self, bid: Signed<Bid>, weight: u32, now_ms: u64) -> Result<(), Refusal> {
        let a = &self.announcement;
        let b = &bid.body;
        if b.auction_id != a.auction_id {
            return Err(Refusal::UnknownAuction);
        }
        if b.requester != a.requester {
            return Err(Refusal::WrongRequester);
        }
        let hash = blake3::hash(&bid.bytes);
        if self.seen.contains(&hash) {
            return Err(Refusal::Replay);
        }
        if now_ms > a.bid_deadline_ms {
            return Err(Refusal::AfterDeadline);
        }
        if b.expires_at_ms < now_ms || b.expires_at_ms < a.bid_deadline_ms {
            return Err(Refusal::Expired);
        }
        if b.expires_at_ms > a.bid_deadline_ms.saturating_add(MAX_BID_TTL_MS) {
            return Err(Refusal::BadField);
        }
        if b.price > a.max_price {
            return Err(Refusal::AboveMaxPrice);
        }
        if self.excluded.contains(&b.bidder) {
            return Err(Refusal::Excluded);
        }
        if self.bidders.contains(&b.bidder) {
            return Err(Refusal::DuplicateBidder);
        }
        if self.entries.len() >= MAX_BIDS_PER_AUCTION {
            return Err(Refusal::AuctionFull);
        }
        self.seen.insert(hash);
        self.bidders.insert(b.bidder);
        let weight = if a.reputation_weighted {
            weight.clamp(*WEIGHT.start(), *WEIGHT.end())
        } else {
            NEUTRAL_WEIGHT
        };
        let seq = self.entries.len() as u64;
        self.entries.push(Entry { bid, weight, seq });
        Ok(())
    }

    /// Closes the book: the selection, or `None` without bids.
    pub fn select(&self) -> Option<Selection> {
        select(&self.announcement, &self.entries)
    }

    /// Closes the book under `rule`: bids of bidders on probation at their quota are left
    /// out; under `proven_only` every bid on probation is left out when a proven one remains;
    /// and a bidder on probation that already failed is left out when any other bid remains.
    /// The selection (or `None` when nothing remains) and the bidders left out.
    pub fn select_under(
        &self,
        rule: Probation,
        standing: impl Fn(&PeerId) -> Standing,
    ) -> (Option<Selection>, Vec<(PeerId, LeftOut)>) {
        let mut left_out = Vec::new();
        let (mut proven, mut clean, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for e in &self.entries {
            let bidder = e.bid.body.bidder;
            match standing(&bidder) {
                Standing::Proven => proven.push(e.clone()),
                Standing::Probation { awards_held, .. } if awards_held >= rule.max_awards => {
                    left_out.push((bidder, LeftOut::Quota));
                }
                Standing::Probation { failed: true, .. } => failed.push(e.clone()),
                Standing::Probation { failed: false, .. } => clean.push(e.clone()),
            }
        }
        let leave = |entries: &mut Vec<Entry>, why: LeftOut, out: &mut Vec<(PeerId, LeftOut)>| {
            out.extend(entries.drain(..).map(|e| (e.bid.body.bidder, why)));
        };
        if rule.proven_only && !proven.is_empty() {
            leave(&mut clean, LeftOut::ProvenFirst, &mut left_out);
            leave(&mut failed, LeftOut::ProvenFirst, &mut left_out);
        } else if !proven.is_empty() || !clean.is_empty() {
            leave(&mut failed, LeftOut::FailedBefore, &mut left_out);
        }
        let mut eligible = proven;
        eligible.append(&mut clean);
        eligible.append(&mut failed);
        (select(&self.announcement, &eligible), left_out)
    }
}

/// Checks that an award follows from its signed bids and the auction's published rule.
///
/// Signatures and field ranges were checked when the award was opened; this checks that the
/// bids belong to the announcement, that the winner beat the runner-up, and that the price is
/// exactly what the rule gives. The weights are the requester's declared view of the two
/// bidders' reputations (neutral unless the announcement is reputation-weighted).
pub fn verify_award(award: &Award) -> Result<(), Refusal> {
    let a = &award.announcement.body;
    let bids = std::iter::once(&award.winner_bid).chain(award.runner_up_bid.as_ref());
    for bid in bids {
        let b = &bid.body;
        if b.auction_id != a.auction_id || b.requester != a.requester {
            return Err(Refusal::BadBids);
        }
        if b.price > a.max_price
            || b.expires_at_ms < a.bid_deadline_ms
            || b.expires_at_ms > a.bid_deadline_ms.saturating_add(MAX_BID_TTL_MS)
        {
            return Err(Refusal::BadBids);
        }
    }
    if let Some(r) = &award.runner_up_bid
        && r.body.bidder == award.winner_bid.body.bidder
    {
        return Err(Refusal::BadBids);
    }
    if !a.reputation_weighted
        && (award.winner_weight != NEUTRAL_WEIGHT || award.runner_up_weight != NEUTRAL_WEIGHT)
    {
        return Err(Refusal::BadPrice);
    }
    let winner = (award.winner_bid.body.price, award.winner_weight);
    let runner_up = award
        .runner_up_bid
        .as_ref()
        .map(|r| (r.body.price, award.runner_up_weight));
    if let Some((price, weight)) = runner_up
        && u128::from(winner.0) * u128::from(winner.1) > u128::from(price) * u128::from(weight)
    {
        return Err(Refusal::BadPrice);
    }
    if award.price != price(a.auction_type, a.max_price, winner, runner_up) {
        return Err(Refusal::BadPrice);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    use super::*;
    use crate::market::wire::{AuctionId, TaskSpec, open, sign};

    fn announcement(key: &Keypair, auction_type: AuctionType, weighted: bool) -> Announcement {
        Announcement {
            auction_id: AuctionId([7; 16]),
            requester: key.public().to_peer_id(),
            task: TaskSpec::Pow {
                input: b"x".to_vec(),
                difficulty: 4,
            },
            max_price: 100,
            auction_type,
            created_at_ms: 1_000,
            bid_deadline_ms: 2_000,
            reputation_weighted: weighted,
            execution_timeout_ms: 1_000,
        }
    }

    fn bid(a: &Announcement, bidder: &Keypair, price: u64) -> Signed<Bid> {
        sign(
            bidder,
            Bid {
                auction_id: a.auction_id,
                requester: a.requester,
                bidder: bidder.public().to_peer_id(),
                price,
                expires_at_ms: a.bid_deadline_ms + 1_000,
            },
        )
    }

    fn book_with(a: &Announcement, bids: &[(u64, u32)]) -> (AuctionBook, Vec<Keypair>) {
        let mut book = AuctionBook::new(a.clone(), HashSet::new());
        let keys: Vec<Keypair> = bids.iter().map(|_| Keypair::generate_ed25519()).collect();
        for ((price, weight), key) in bids.iter().zip(&keys) {
            book.offer(bid(a, key, *price), *weight, 1_500).unwrap();
        }
        (book, keys)
    }

    fn award_of(requester: &Keypair, a: &Announcement, s: &Selection) -> Award {
        Award {
            announcement: sign(requester, a.clone()),
            winner_bid: s.winner.bid.clone(),
            runner_up_bid: s.runner_up.as_ref().map(|e| e.bid.clone()),
            price: s.price,
            winner_weight: s.winner.weight,
            runner_up_weight: s.runner_up.as_ref().map_or(NEUTRAL_WEIGHT, |e| e.weight),
        }
    }

    #[test]
    fn first_price_pays_the_winning_bid() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::FirstPrice, false);
        let (book, keys) = book_with(&a, &[(50, 1000), (30, 1000), (40, 1000)]);
        let s = book.select().unwrap();
        assert_eq!(s.winner.bid.body.bidder, keys[1].public().to_peer_id());
        assert_eq!(s.price, 30);
        assert_eq!(s.runner_up.unwrap().bid.body.price, 40);
    }

    #[test]
    fn second_price_pays_the_runner_up_bid_without_weighting() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, false);
        // Weights are ignored when the auction is not weighted.
        let (book, _) = book_with(&a, &[(50, 500), (30, 1500), (40, 700)]);
        let s = book.select().unwrap();
        assert_eq!(s.winner.bid.body.price, 30);
        assert_eq!(s.price, 40);
        assert!(verify_award(&award_of(&r, &a, &s)).is_ok());
    }

    #[test]
    fn reputation_weighting_can_beat_a_lower_price() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, true);
        // 40 × 600 = 24000 beats 30 × 1000 = 30000.
        let (book, keys) = book_with(&a, &[(30, 1000), (40, 600)]);
        let s = book.select().unwrap();
        assert_eq!(s.winner.bid.body.bidder, keys[1].public().to_peer_id());
        // Critical price: highest p with p × 600 ≤ 30 × 1000, i.e. 50.
        assert_eq!(s.price, 50);
        assert!(verify_award(&award_of(&r, &a, &s)).is_ok());
    }

    #[test]
    fn single_bid_second_price_pays_the_maximum() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, false);
        let (book, _) = book_with(&a, &[(20, 1000)]);
        let s = book.select().unwrap();
        assert_eq!(s.price, a.max_price);
        assert!(s.runner_up.is_none());
        assert!(verify_award(&award_of(&r, &a, &s)).is_ok());
    }

    #[test]
    fn no_bids_no_winner() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, false);
        assert!(AuctionBook::new(a, HashSet::new()).select().is_none());
    }

    #[test]
    fn ties_go_to_reputation_then_to_the_earliest_bid() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::FirstPrice, true);
        // Same weighted cost 30000: the lower weight (better reputation) wins.
        let (book, keys) = book_with(&a, &[(30, 1000), (50, 600)]);
        assert_eq!(
            book.select().unwrap().winner.bid.body.bidder,
            keys[1].public().to_peer_id()
        );
        // Same price, same weight: the earlier bid wins.
        let (book, keys) = book_with(&a, &[(30, 1000), (30, 1000)]);
        assert_eq!(
            book.select().unwrap().winner.bid.body.bidder,
            keys[0].public().to_peer_id()
        );
    }

    #[test]
    fn bid_validation_refuses_each_bad_bid_and_changes_nothing() {
        let r = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, false);
        let p = Keypair::generate_ed25519();
        let mut book = AuctionBook::new(a.clone(), HashSet::new());
        let good = bid(&a, &p, 10);

        let mut wrong_auction = a.clone();
        wrong_auction.auction_id = AuctionId([8; 16]);
        let mut wrong_requester = a.clone();
        wrong_requester.requester = other.public().to_peer_id();
        let mut expiring = good.body.clone();
        expiring.expires_at_ms = a.bid_deadline_ms - 1;
        let mut forever = good.body.clone();
        forever.expires_at_ms = u64::MAX;
        let cases = [
            (bid(&wrong_auction, &p, 10), 1_500, Refusal::UnknownAuction),
            (
                bid(&wrong_requester, &p, 10),
                1_500,
                Refusal::WrongRequester,
            ),
            (bid(&a, &p, 101), 1_500, Refusal::AboveMaxPrice),
            (good.clone(), 2_001, Refusal::AfterDeadline),
            (sign(&p, expiring), 1_500, Refusal::Expired),
            (sign(&p, forever), 1_500, Refusal::BadField),
        ];
        for (b, now, want) in cases {
            assert_eq!(book.offer(b, 1000, now), Err(want));
            assert!(book.entries().is_empty(), "{want:?} changed the book");
        }
        book.offer(good.clone(), 1000, 1_500).unwrap();
        assert_eq!(book.offer(good, 1000, 1_600), Err(Refusal::Replay));
        assert_eq!(
            book.offer(bid(&a, &p, 9), 1000, 1_600),
            Err(Refusal::DuplicateBidder)
        );
        assert_eq!(book.entries().len(), 1);

        let mut excluded = AuctionBook::new(a.clone(), [p.public().to_peer_id()].into());
        assert_eq!(
            excluded.offer(bid(&a, &p, 10), 1000, 1_500),
            Err(Refusal::Excluded)
        );
    }

    #[test]
    fn an_auction_takes_a_bounded_number_of_bids() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, false);
        let mut book = AuctionBook::new(a.clone(), HashSet::new());
        for _ in 0..MAX_BIDS_PER_AUCTION {
            book.offer(bid(&a, &Keypair::generate_ed25519(), 10), 1000, 1_500)
                .unwrap();
        }
        let late = bid(&a, &Keypair::generate_ed25519(), 1);
        assert_eq!(book.offer(late, 1000, 1_500), Err(Refusal::AuctionFull));
        assert_eq!(book.entries().len(), MAX_BIDS_PER_AUCTION);
    }

    #[test]
    fn bad_signatures_and_wrong_signers_do_not_open() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, false);
        let p = Keypair::generate_ed25519();
        let mut bytes = bid(&a, &p, 10).bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(open::<Bid>(&bytes).unwrap_err(), Refusal::BadSignature);
        // Signed by someone who is not the bidder it names.
        let forged = sign(&r, bid(&a, &p, 10).body);
        assert_eq!(
            open::<Bid>(&forged.bytes).unwrap_err(),
            Refusal::WrongSigner
        );
        // A bid envelope is not an announcement.
        assert_eq!(
            open::<Announcement>(&bid(&a, &p, 10).bytes).unwrap_err(),
            Refusal::WrongType
        );
    }

    #[test]
    fn an_understated_second_price_does_not_verify() {
        let r = Keypair::generate_ed25519();
        let a = announcement(&r, AuctionType::SecondPrice, false);
        let (book, _) = book_with(&a, &[(30, 1000), (40, 1000)]);
        let s = book.select().unwrap();
        let mut award = award_of(&r, &a, &s);
        award.price = 35;
        assert_eq!(verify_award(&award), Err(Refusal::BadPrice));
        // Claiming weights on an unweighted auction does not verify either.
        let mut award = award_of(&r, &a, &s);
        award.winner_weight = 1200;
        award.price = 33;
        assert_eq!(verify_award(&award), Err(Refusal::BadPrice));
        // Dropping the runner-up would raise the price to the maximum, not lower it; swapping
        // winner and runner-up does not verify.
        let mut award = award_of(&r, &a, &s);
        std::mem::swap(&mut award.winner_bid, award.runner_up_bid.as_mut().unwrap());
        assert_eq!(verify_award(&award), Err(Refusal::BadPrice));
    }

    proptest! {
        #[test]
        fn critical_price_is_between_the_winning_bid_and_the_maximum(
            bids in prop::collection::vec((1u64..=1000, 500u32..=1500), 1..8),
            max_extra in 0u64..1000,
            weighted in any::<bool>(),
            second in any::<bool>(),
        ) {
            let r = Keypair::generate_ed25519();
            let kind = if second { AuctionType::SecondPrice } else { AuctionType::FirstPrice };
            let mut a = announcement(&r, kind, weighted);
            a.max_price = bids.iter().map(|b| b.0).max().unwrap() + max_extra;
            let (book, _) = book_with(&a, &bids);
            let s = book.select().unwrap();
            prop_assert!(s.price >= s.winner.bid.body.price);
            prop_assert!(s.price <= a.max_price);
            // The winner has the lowest weighted cost of all.
            for e in book.entries() {
                prop_assert!(s.winner.cost() <= e.cost());
            }
            // Had it bid its critical price, it would still have won (second price).
            if second && let Some(r) = &s.runner_up {
                prop_assert!(u128::from(s.price) * u128::from(s.winner.weight) <= r.cost());
            }
            prop_assert!(verify_award(&award_of(&r, &a, &s)).is_ok());
        }
    }

    #[test]
    fn a_newcomer_starts_worse_than_neutral() {
        assert_eq!(bidder_weight(NEUTRAL_SCORE, true, 1250), 1250);
        assert_eq!(bidder_weight(NEUTRAL_SCORE, false, 1250), NEUTRAL_WEIGHT);
        // A newcomer that already failed keeps its worse weight; the floor never helps it.
        assert_eq!(bidder_weight(0.0, true, 1250), 1500);
        // Out-of-range settings stay within the wire's range.
        assert_eq!(bidder_weight(NEUTRAL_SCORE, true, 9_999), 1500);
    }

    const NEUTRAL_SCORE: f64 = 0.5;

    #[test]
    fn probation_leaves_newcomers_out_at_their_quota_and_after_a_newcomer_failed() {
        let r = Keypair::generate_ed25519();
        for weighted in [false, true] {
            let a = announcement(&r, AuctionType::SecondPrice, weighted);
            // A newcomer at 1, a proven provider at 30, another newcomer at 20.
            let (book, keys) = book_with(&a, &[(1, 1250), (30, 1000), (20, 1250)]);
            let ids: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
            let proven = ids[1];
            let held = |n: usize| {
                move |p: &PeerId| {
                    if *p == proven {
                        Standing::Proven
                    } else {
                        Standing::Probation {
                            awards_held: n,
                            failed: false,
                        }
                    }
                }
            };
            let open = Probation {
                max_awards: 1,
                proven_only: false,
            };
            // Under its quota, the cheapest newcomer wins like anyone.
            let (s, out) = book.select_under(open, held(0));
            assert_eq!(s.unwrap().winner.bid.body.bidder, ids[0]);
            assert!(out.is_empty());
            // At its quota, both newcomers are left out: the proven provider wins.
            let (s, out) = book.select_under(open, held(1));
            let s = s.unwrap();
            assert_eq!(s.winner.bid.body.bidder, proven);
            assert_eq!(out.len(), 2);
            assert!(out.iter().all(|(_, why)| *why == LeftOut::Quota));
            assert!(verify_award(&award_of(&r, &a, &s)).is_ok());
            // After a newcomer failed the task, a proven bid goes first.
            let after = Probation {
                max_awards: 1,
                proven_only: true,
            };
            let (s, out) = book.select_under(after, held(0));
            let s = s.unwrap();
            assert_eq!(s.winner.bid.body.bidder, proven);
            assert!(s.runner_up.is_none());
            assert_eq!(
                out,
                vec![
                    (ids[0], LeftOut::ProvenFirst),
                    (ids[2], LeftOut::ProvenFirst)
                ]
            );
            assert!(verify_award(&award_of(&r, &a, &s)).is_ok());
            // Without a proven bid, newcomers still get the task.
            let nobody_proven = |_: &PeerId| Standing::Probation {
                awards_held: 0,
                failed: false,
            };
            let (s, out) = book.select_under(after, nobody_proven);
            assert_eq!(s.unwrap().winner.bid.body.bidder, ids[0]);
            assert!(out.is_empty());
            // A newcomer that already failed gets the task only when nobody else bid.
            let failed_first = |p: &PeerId| Standing::Probation {
                awards_held: 0,
                failed: *p == ids[0],
            };
            let (s, out) = book.select_under(open, failed_first);
            assert_eq!(s.unwrap().winner.bid.body.bidder, ids[2]);
            assert_eq!(out, vec![(ids[0], LeftOut::FailedBefore)]);
            let (alone, alone_keys) = book_with(&a, &[(1, 1250)]);
            let alone_id = alone_keys[0].public().to_peer_id();
            let failed = |_: &PeerId| Standing::Probation {
                awards_held: 0,
                failed: true,
            };
            let (s, out) = alone.select_under(after, failed);
            assert_eq!(s.unwrap().winner.bid.body.bidder, alone_id);
            assert!(out.is_empty());
        }
    }

    proptest! {
        /// Whatever the bids and standings: the award verifies from its own bids, no
        /// newcomer at its quota wins, under `proven_only` a proven provider wins whenever
        /// one bid, and a bid is left out only for one of those reasons.
        #[test]
        fn probation_keeps_awards_verifiable(
            bids in prop::collection::vec(
                (1u64..=1000, 500u32..=1500, prop::option::of((0usize..3, any::<bool>()))),
                1..8,
            ),
            max_awards in 0usize..3,
            proven_only in any::<bool>(),
            weighted in any::<bool>(),
            second in any::<bool>(),
        ) {
            let r = Keypair::generate_ed25519();
            let kind = if second { AuctionType::SecondPrice } else { AuctionType::FirstPrice };
            let mut a = announcement(&r, kind, weighted);
            a.max_price = 1000;
            let plain: Vec<(u64, u32)> = bids.iter().map(|b| (b.0, b.1)).collect();
            let (book, keys) = book_with(&a, &plain);
            let standing: std::collections::HashMap<PeerId, Standing> = keys
                .iter()
                .zip(&bids)
                .map(|(k, b)| {
                    let s = match b.2 {
                        None => Standing::Proven,
                        Some((n, failed)) => Standing::Probation {
                            awards_held: n,
                            failed,
                        },
                    };
                    (k.public().to_peer_id(), s)
                })
                .collect();
            let rule = Probation { max_awards, proven_only };
            let (s, out) = book.select_under(rule, |p| standing[p]);
            let under_quota = |s: &Standing| match s {
                Standing::Proven => true,
                Standing::Probation { awards_held, .. } => *awards_held < max_awards,
            };
            let any_proven = standing.values().any(|s| *s == Standing::Proven);
            let any_eligible = standing.values().any(under_quota);
            let any_clean = standing
                .values()
                .any(|s| under_quota(s) && !matches!(s, Standing::Probation { failed: true, .. }));
            prop_assert_eq!(s.is_some(), any_eligible);
            if let Some(s) = s {
                prop_assert!(verify_award(&award_of(&r, &a, &s)).is_ok());
                if let Standing::Probation { awards_held, failed } = standing[&s.winner.bid.body.bidder] {
                    prop_assert!(awards_held < max_awards);
                    prop_assert!(!(proven_only && any_proven));
                    prop_assert!(!failed || !any_clean);
                }
            }
            for (p, why) in out {
                match (standing[&p], why) {
                    (Standing::Probation { awards_held, .. }, LeftOut::Quota) => {
                        prop_assert!(awards_held >= max_awards);
                    }
                    (Standing::Probation { .. }, LeftOut::ProvenFirst) => {
                        prop_assert!(proven_only && any_proven);
                    }
                    (Standing::Probation { failed, .. }, LeftOut::FailedBefore) => {
                        prop_assert!(failed && any_clean);
                    }
                    (Standing::Proven, _) => prop_assert!(false, "a proven bid was left out"),
                }
            }
        }
    }
}
