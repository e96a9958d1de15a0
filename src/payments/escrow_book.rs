//! The escrows peers locked for this node, as their latest binding states in open channels
//! hold them: the market checks here, without waiting on the payments actor, that a
//! requester locked a task's price for it before it executes the task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

use super::channel::{Channel, Outcome, Status};
use super::wire::{ChannelId, EscrowId};

/// A lock a peer holds for us: how much, until when, in which channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escrowed {
    /// The amount.
    pub amount: u64,
    /// When the payer may refund it alone (Unix ms).
    pub expires_at_ms: u64,
    channel: ChannelId,
}

/// The escrows locked for us, by payer and escrow id (an escrow id alone can be reused by
/// another payer in another channel). Shared by the payments actor, which writes it, and
/// the market, which reads it.
#[derive(Debug, Clone, Default)]
pub struct EscrowBook(Arc<Mutex<Book>>);

#[derive(Debug, Default)]
struct Book {
    locks: HashMap<(PeerId, EscrowId), Escrowed>,
    /// The keys each channel put in, so a channel's update touches only its own.
    by_channel: HashMap<ChannelId, Vec<(PeerId, EscrowId)>>,
    /// Locks that were released to us, the latest [`RELEASED`] (oldest first).
    released: HashSet<(PeerId, EscrowId)>,
    released_order: VecDeque<(PeerId, EscrowId)>,
}

/// Released locks remembered, so a provider can tell at a lock's expiry that it was paid.
const RELEASED: usize = 4096;

impl EscrowBook {
    /// What `payer` locked for us under `escrow`, if it did, in an open channel.
    pub fn locked(&self, payer: &PeerId, escrow: &EscrowId) -> Option<Escrowed> {
        let book = self.0.lock().expect("escrow book poisoned");
        book.locks.get(&(*payer, *escrow)).copied()
    }

    /// Whether `payer` released to us what it locked under `escrow` (among the latest
    /// releases; a refunded or still locked escrow is not).
    pub fn released(&self, payer: &PeerId, escrow: &EscrowId) -> bool {
        let book = self.0.lock().expect("escrow book poisoned");
        book.released.contains(&(*payer, *escrow))
    }

    /// Mirrors `channel`'s locks held for us; a channel that is not open holds none we could
    /// still count on.
    pub(super) fn sync(&self, channel: &Channel) {
        let id = channel.id();
        let peer = channel.peer();
        let mut book = self.0.lock().expect("escrow book poisoned");
        let Book {
            locks,
            by_channel,
            released,
            released_order,
        } = &mut *book;
        for key in by_channel.remove(&id).unwrap_or_default() {
            if locks.get(&key).is_some_and(|e| e.channel == id) {
                locks.remove(&key);
            }
            // A lock of ours that left the state by a release was paid to us.
            if channel.lock(&key.1).is_none()
                && channel.resolution(&key.1) == Some(Outcome::Released)
                && released.insert(key)
            {
                released_order.push_back(key);
                if released_order.len() > RELEASED
                    && let Some(old) = released_order.pop_front()
                {
                    released.remove(&old);
                }
            }
        }
        if channel.status != Status::Open {
            return;
        }
        let mut keys = Vec::new();
        for lock in &channel.latest.state.locks {
            if lock.payer != channel.local {
                let key = (peer, lock.escrow_id);
                locks.insert(
                    key,
                    Escrowed {
                        amount: lock.amount,
                        expires_at_ms: lock.expires_at_ms,
                        channel: id,
                    },
                );
                keys.push(key);
            }
        }
        if !keys.is_empty() {
            by_channel.insert(id, keys);
        }
    }
}
