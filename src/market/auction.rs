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
}
