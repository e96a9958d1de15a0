//! Payment ids (the `Idempotency-Key` of the API): a client names each payment or open, and a
//! retry with the same id is answered with what the first request made instead of paying
//! again.
//!
//! The node remembers the last [`MAX_PAYMENT_IDS`] ids (oldest forgotten first). An id is
//! written to the ledger in the same transaction as the signed state that carries its
//! payment, so an id survives a restart exactly when its payment does; an id whose payment
//! is only queued (not signed yet) lives in memory, as the queued payment does.

use std::fmt;
use std::num::NonZeroUsize;

use libp2p::PeerId;
use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::wire::ChannelId;
use crate::ledger::Write;

/// Payment ids remembered (the oldest is forgotten first).
pub const MAX_PAYMENT_IDS: usize = 10_000;
/// Longest payment id, in bytes.
pub const MAX_PAYMENT_ID_LEN: usize = 128;
/// The HTTP header that carries a payment id (in requests, and echoed in answers).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The HTTP answer header that says whether an earlier request with the payment id made the
/// payment (`true`: this one paid nothing) or this one did (`false`).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A client-chosen name of one payment or open: 1 to [`MAX_PAYMENT_ID_LEN`] characters among
/// ASCII letters, digits and `-_.:`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentId(String);

/// Why a payment id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentIdError {
    /// Empty, too long, or with a character outside the allowed set.
    #[error(
        "a payment id is 1 to {MAX_PAYMENT_ID_LEN} characters among ASCII letters, digits and `-_.:`"
    )]
    Invalid,
    /// The `Idempotency-Key` header and the `payment_id` field disagree.
    #[error("the Idempotency-Key header and the payment_id field differ; send one, or both equal")]
    Conflicting,
}

impl PaymentId {
    /// Checks `s`.
    pub fn parse(s: &str) -> Result<Self, PaymentIdError> {
        let ok = (1..=MAX_PAYMENT_ID_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(PaymentIdError::Invalid)
        }
    }

    /// A new random id (32 hex digits).
    pub fn random() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// The id of a request: from the `Idempotency-Key` header (raw bytes) and/or the body's
    /// `payment_id` (equal if both are given), or a new random one if neither is.
    pub fn of_request(header: Option<&[u8]>, field: Option<&str>) -> Result<Self, PaymentIdError> {
        let header = header
            .map(|b| std::str::from_utf8(b).map_err(|_| PaymentIdError::Invalid))
            .transpose()?;
        match (header, field) {
            (Some(h), Some(f)) if h != f => Err(PaymentIdError::Conflicting),
            (Some(s), _) | (None, Some(s)) => Self::parse(s),
            (None, None) => Ok(Self::random()),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PaymentId {
    type Error = PaymentIdError;
    fn try_from(s: String) -> Result<Self, PaymentIdError> {
        Self::parse(&s)
    }
}

impl From<PaymentId> for String {
    fn from(id: PaymentId) -> String {
        id.0
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaymentId({})", self.0)
    }
}

/// What a payment id was used for: the request's parameters, which a retry must repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paid {
    /// A payment of `amount` in the record's channel.
    Pay {
        /// The amount.
        amount: u64,
    },
    /// An open of the record's channel.
    Open {
        /// The other party.
        peer: PeerId,
        /// Our deposit.
        deposit: u64,
        /// The deposit asked of the peer.
        peer_deposit: u64,
    },
}

/// What the node remembers of a payment id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The channel paid in (or opened).
    pub channel: ChannelId,
    /// What the request asked.
    pub paid: Paid,
    /// The number of the signed state that carries it; `None` while it is queued behind
    /// another proposal (then it is not in the ledger either).
    pub number: Option<u64>,
    /// Order of first use (the oldest is forgotten first, also after a restart).
    seq: u64,
    /// The tag of the request that made it (not kept in the ledger: 0 after a restart, so
    /// every later request is a replay).
    pub origin: u64,
}

impl Record {
    /// What the id was used for, in words, for the error of a reuse.
    pub fn describe(&self) -> String {
        match self.paid {
            Paid::Pay { amount } => format!("a payment of {amount} in channel {}", self.channel),
            Paid::Open {
                peer,
                deposit,
                peer_deposit,
            } => format!(
                "the open of channel {} to {peer} (deposit {deposit}, peer deposit {peer_deposit})",
                self.channel
            ),
        }
    }
}

/// The ledger's form of a [`Record`] (JSON).
#[derive(Serialize, Deserialize)]
struct Stored {
    channel: String,
    #[serde(default)]
    amount: u64,
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    peer_deposit: u64,
    number: u64,
    seq: u64,
}

impl Record {
    fn encode(&self) -> Option<Vec<u8>> {
        let number = self.number?;
        let (amount, peer, peer_deposit) = match self.paid {
            Paid::Pay { amount } => (amount, None, 0),
            Paid::Open {
                peer,
                deposit,
                peer_deposit,
            } => (deposit, Some(peer.to_string()), peer_deposit),
        };
        let stored = Stored {
            channel: self.channel.to_string(),
            amount,
            peer,
            peer_deposit,
            number,
            seq: self.seq,
        };
        Some(serde_json::to_vec(&stored).expect("json"))
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let s: Stored = serde_json::from_slice(bytes).ok()?;
        let paid = match s.peer {
            None => Paid::Pay { amount: s.amount },
            Some(peer) => Paid::Open {
                peer: peer.parse().ok()?,
                deposit: s.amount,
                peer_deposit: s.peer_deposit,
            },
        };
        Some(Self {
            channel: s.channel.parse().ok()?,
            paid,
            number: Some(s.number),
            seq: s.seq,
            origin: 0,
        })
    }
}

/// The payment ids the node remembers, at most a cap of them (oldest forgotten first), and
/// the ledger writes their changes need.
#[derive(Debug)]
pub(crate) struct PaymentIds {
    /// Used as a FIFO: only `push`, `peek`, `peek_mut` and `pop`, so first use sets the order.
    entries: LruCache<PaymentId, Record>,
    next_seq: u64,
    writes: Vec<Write>,
}

impl PaymentIds {
    /// An empty table of at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        Self {
            entries: LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN)),
            next_seq: 0,
            writes: Vec::new(),
        }
    }

    /// The table the ledger held (`(id, record)` pairs), oldest first, at most `cap`;
    /// unreadable and surplus records are deleted from the ledger.
    pub fn load(cap: usize, stored: &[(Vec<u8>, Vec<u8>)]) -> Self {
        let mut table = Self::new(cap);
        let mut records: Vec<(PaymentId, Record)> = Vec::new();
        for (key, value) in stored {
            let id = std::str::from_utf8(key)
                .ok()
                .and_then(|s| PaymentId::parse(s).ok());
            match (id, Record::decode(value)) {
                (Some(id), Some(record)) => records.push((id, record)),
                _ => {
                    tracing::warn!("dropping an unreadable payment id record");
                    table.writes.push(Write::ForgetPaymentId(key.clone()));
                }
            }
        }
        records.sort_by_key(|(_, r)| r.seq);
        for (id, record) in records {
            table.next_seq = table.next_seq.max(record.seq + 1);
            if let Some((old, _)) = table.entries.push(id, record) {
                table
                    .writes
                    .push(Write::ForgetPaymentId(old.0.into_bytes()));
            }
        }
        table
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// What `id` was used for.
    pub fn get(&self, id: &PaymentId) -> Option<&Record> {
        self.entries.peek(id)
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = (&PaymentId, &Record)> {
        self.entries.iter().rev()
    }

    /// Remembers `id` for `paid` in `channel` (signed as state `number`, or queued), made by
    /// the request tagged `origin`; the oldest id goes if the table is full.
    pub fn insert(
        &mut self,
        id: PaymentId,
        channel: ChannelId,
        paid: Paid,
        number: Option<u64>,
        origin: u64,
    ) {
        let record = Record {
            channel,
            paid,
            number,
            seq: self.next_seq,
            origin,
        };
        self.next_seq += 1;
        if let Some(bytes) = record.encode() {
            self.writes
                .push(Write::PaymentId(id.0.clone().into_bytes(), bytes));
        }
        if let Some((old, old_record)) = self.entries.push(id.clone(), record)
            && old != id
        {
            self.forget_write(&old, &old_record);
        }
    }

    /// The payment of `id` is signed as state `number`: from now on it is durable.
    pub fn signed(&mut self, id: &PaymentId, number: u64) {
        if let Some(r) = self.entries.peek_mut(id) {
            r.number = Some(number);
            let bytes = r.encode().expect("numbered");
            self.writes
                .push(Write::PaymentId(id.0.clone().into_bytes(), bytes));
        }
    }

    /// The state that carried the payment of `id` was refused and its payment is queued
    /// again: it is no longer durable (a restart would lose the queued payment too).
    pub fn unsigned(&mut self, id: &PaymentId) {
        if let Some(r) = self.entries.peek_mut(id)
            && r.number.take().is_some()
        {
            self.writes
                .push(Write::ForgetPaymentId(id.0.clone().into_bytes()));
        }
    }

    /// Forgets `id` (its payment failed: a retry may pay).
    pub fn forget(&mut self, id: &PaymentId) {
        if let Some(record) = self.entries.pop(id) {
            self.forget_write(id, &record);
        }
    }

    fn forget_write(&mut self, id: &PaymentId, record: &Record) {
        if record.number.is_some() {
            self.writes
                .push(Write::ForgetPaymentId(id.0.clone().into_bytes()));
        }
    }

    /// The ledger writes of the changes since the last call, in order.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> PaymentId {
        PaymentId::parse(&format!("p-{n}")).unwrap()
    }

    fn pay(amount: u64) -> Paid {
        Paid::Pay { amount }
    }

    #[test]
    fn ids_are_checked() {
        assert!(PaymentId::parse("a1-_.:Z").is_ok());
        for bad in ["", "with space", "é", &"x".repeat(MAX_PAYMENT_ID_LEN + 1)] {
            assert_eq!(PaymentId::parse(bad), Err(PaymentIdError::Invalid), "{bad}");
        }
        assert!(PaymentId::parse(&"x".repeat(MAX_PAYMENT_ID_LEN)).is_ok());
        assert_ne!(PaymentId::random(), PaymentId::random());
        assert_eq!(
            PaymentId::of_request(Some(b"k1"), Some("k1"))
                .unwrap()
                .as_str(),
            "k1"
        );
        assert_eq!(
            PaymentId::of_request(None, Some("k2")).unwrap().as_str(),
            "k2"
        );
        assert_eq!(
            PaymentId::of_request(Some(b"k1"), Some("k2")),
            Err(PaymentIdError::Conflicting)
        );
        assert_eq!(
            PaymentId::of_request(Some(&[0xff]), None),
            Err(PaymentIdError::Invalid)
        );
        assert_eq!(
            PaymentId::of_request(None, None).unwrap().as_str().len(),
            32
        );
    }

    #[test]
    fn the_table_keeps_at_most_its_cap_and_forgets_the_oldest_first() {
        let channel = ChannelId([7; 32]);
        let mut t = PaymentIds::new(3);
        for n in 0..3 {
            t.insert(id(n), channel, pay(n as u64 + 1), Some(n as u64 + 1), 1);
        }
        // Looking an id up does not make it younger.
        assert!(t.get(&id(0)).is_some());
        t.take_writes();
        t.insert(id(3), channel, pay(4), Some(4), 1);
        assert_eq!(t.len(), 3);
        assert!(t.get(&id(0)).is_none(), "the oldest went");
        assert!(t.get(&id(1)).is_some() && t.get(&id(3)).is_some());
        let writes = t.take_writes();
        assert!(writes.contains(&Write::ForgetPaymentId(b"p-0".to_vec())));
        assert!(matches!(&writes[0], Write::PaymentId(k, _) if k == b"p-3"));
        // A queued (unsigned) id is not in the ledger: forgetting it writes nothing.
        t.insert(id(4), channel, pay(5), None, 1);
        let writes = t.take_writes();
        assert_eq!(writes, vec![Write::ForgetPaymentId(b"p-1".to_vec())]);
        t.forget(&id(4));
        assert!(t.take_writes().is_empty());
        // Many more than the cap: still the cap, the newest ones.
        for n in 10..1000 {
            t.insert(id(n), channel, pay(1), None, 1);
        }
        assert_eq!(t.len(), 3);
        let kept: Vec<_> = t.ids().map(|(k, _)| k.clone()).collect();
        assert_eq!(kept, vec![id(997), id(998), id(999)]);
    }

    #[test]
    fn records_round_trip_through_the_ledger_form_and_keep_their_order() {
        let channel = ChannelId([1; 32]);
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let mut t = PaymentIds::new(10);
        t.insert(id(1), channel, pay(10), None, 1);
        t.signed(&id(1), 4);
        let open = Paid::Open {
            peer,
            deposit: 100,
            peer_deposit: 5,
        };
        t.insert(id(2), channel, open, Some(0), 1);
        t.insert(id(3), channel, pay(3), Some(5), 1);
        t.unsigned(&id(3));
        // What the ledger would hold after these writes.
        let mut stored: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for w in t.take_writes() {
            match w {
                Write::PaymentId(k, v) => {
                    stored.retain(|(x, _)| *x != k);
                    stored.push((k, v));
                }
                Write::ForgetPaymentId(k) => stored.retain(|(x, _)| *x != k),
                _ => unreachable!(),
            }
        }
        stored.reverse();
        stored.push((b"bad id".to_vec(), b"{}".to_vec()));
        let mut loaded = PaymentIds::load(1, &stored);
        assert_eq!(loaded.len(), 1, "capped at load");
        assert_eq!(loaded.get(&id(2)).unwrap().paid, open);
        assert_eq!(loaded.get(&id(2)).unwrap().number, Some(0));
        let writes = loaded.take_writes();
        assert!(writes.contains(&Write::ForgetPaymentId(b"bad id".to_vec())));
        assert!(writes.contains(&Write::ForgetPaymentId(b"p-1".to_vec())));
        let loaded = PaymentIds::load(10, &stored[..2]);
        let order: Vec<_> = loaded.ids().map(|(k, r)| (k.clone(), r.number)).collect();
        assert_eq!(order, vec![(id(1), Some(4)), (id(2), Some(0))]);
    }
}
