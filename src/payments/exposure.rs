//! How much credit a channel opened for a task's escrow takes, and how much may sit with
//! peers that never completed a task for this node. Pure: the payments actor gathers the
//! figures, these rules decide.
//!
//! - A channel opened to lock a task's price is funded for `prices` such locks (capped by
//!   `cap`, the configured `channel_deposit`; never below the price), not a fixed deposit,
//!   so a peer that takes the open and then stalls holds little.
//! - Channels with newcomers (peers none of whose escrows from this node was ever released)
//!   hold at most `percent` of the node's credit (its wallet plus what it holds in unsettled
//!   channels); a lock that needs a channel beyond that fails rather than parks more.

/// Why no channel can be funded for a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// The wallet holds less than the lock's amount.
    Wallet,
    /// The newcomers' share of the credit has less room than the lock's amount.
    NewcomerShare,
}

/// Most the channels with newcomers may hold: `percent` of `total` credit.
pub fn newcomer_limit(total: u64, percent: u64) -> u64 {
    let limit = u128::from(total) * u128::from(percent.min(100)) / 100;
    limit as u64
}

/// The deposit of a new channel opened to lock `amount`: `prices` times the amount, at most
/// `cap` but at least the amount, within the wallet's `available` credit and, for a newcomer,
/// within `newcomer_room` (the newcomers' limit less what their channels already hold).
pub fn escrow_deposit(
    amount: u64,
    prices: u64,
    cap: u64,
    available: u64,
    newcomer_room: Option<u64>,
) -> Result<u64, Shortfall> {
    let wanted = amount.saturating_mul(prices).min(cap).max(amount);
    let deposit = wanted.min(available);
    if deposit < amount {
        return Err(Shortfall::Wallet);
    }
    match newcomer_room {
        Some(room) if room < amount => Err(Shortfall::NewcomerShare),
        Some(room) => Ok(deposit.min(room)),
        None => Ok(deposit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_channel_is_funded_for_a_few_prices_not_a_fixed_deposit() {
        assert_eq!(escrow_deposit(10, 4, 100_000, 1_000_000, None), Ok(40));
        // Capped by channel_deposit, but never below the price.
        assert_eq!(
            escrow_deposit(50_000, 4, 100_000, 1_000_000, None),
            Ok(100_000)
        );
        assert_eq!(
            escrow_deposit(200_000, 4, 100_000, 1_000_000, None),
            Ok(200_000)
        );
        // The wallet's last credit still funds one lock.
        assert_eq!(escrow_deposit(10, 4, 100_000, 25, None), Ok(25));
        assert_eq!(
            escrow_deposit(10, 4, 100_000, 9, None),
            Err(Shortfall::Wallet)
        );
    }

    #[test]
    fn newcomers_get_at_most_their_share() {
        assert_eq!(newcomer_limit(1_000_000, 5), 50_000);
        assert_eq!(newcomer_limit(u64::MAX, 100), u64::MAX);
        assert_eq!(escrow_deposit(10, 4, 100_000, 1_000, Some(100)), Ok(40));
        // Less room than four prices: a smaller channel, still one lock.
        assert_eq!(escrow_deposit(10, 4, 100_000, 1_000, Some(15)), Ok(15));
        assert_eq!(
            escrow_deposit(10, 4, 100_000, 1_000, Some(9)),
            Err(Shortfall::NewcomerShare)
        );
        // The wallet is checked first: its error says what to do about it.
        assert_eq!(
            escrow_deposit(10, 4, 100_000, 5, Some(0)),
            Err(Shortfall::Wallet)
        );
    }

    proptest! {
        #[test]
        fn the_deposit_covers_the_lock_and_stays_within_every_bound(
            amount in 1u64..1_000_000,
            prices in 1u64..1_000,
            cap in 1u64..10_000_000,
            available in 0u64..10_000_000,
            room in proptest::option::of(0u64..10_000_000),
        ) {
            match escrow_deposit(amount, prices, cap, available, room) {
                Ok(d) => {
                    prop_assert!(d >= amount);
                    prop_assert!(d <= available);
                    prop_assert!(d <= amount.saturating_mul(prices).max(amount));
                    prop_assert!(d <= cap.max(amount));
                    if let Some(room) = room {
                        prop_assert!(d <= room);
                    }
                }
                Err(Shortfall::Wallet) => prop_assert!(available < amount),
                Err(Shortfall::NewcomerShare) => {
                    prop_assert!(available >= amount);
                    prop_assert!(room.is_some_and(|r| r < amount));
                }
            }
        }
    }
}
