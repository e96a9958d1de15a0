//! How a [`Channel`] and the wallet are kept in the ledger: protobuf records
//! (`ChannelRecord`, `Wallet` of `proto/payments.proto`), so the signed states are stored as
//! the exact bytes that were signed.

use std::collections::VecDeque;

use prost::Message;

use super::channel::{Channel, Outcome, Settlement, Status};
use super::wire::{ChannelError, EscrowId, Proposal, Side, SignedClose, SignedState, pb};

/// The wallet: what the node may commit to channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wallet {
    /// The credit it started with (from config, on first start).
    pub initial_credit: u64,
    /// What it can still put into channels.
    pub available: u64,
}

impl Wallet {
    /// Encodes the wallet for the ledger.
    pub fn encode(&self) -> Vec<u8> {
        pb::Wallet {
            initial_credit: self.initial_credit,
            available: self.available,
        }
        .encode_to_vec()
    }

    /// Decodes the wallet from the ledger.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChannelError> {
        let m = pb::Wallet::decode(bytes).map_err(|_| ChannelError::Malformed)?;
        Ok(Self {
            initial_credit: m.initial_credit,
            available: m.available,
        })
    }
}

/// Encodes a channel for the ledger.
pub fn encode(c: &Channel) -> Vec<u8> {
    let (status, close, settlement, settled_at) = match &c.status {
        Status::Opening => (0, None, 0, 0),
        Status::Open => (1, None, 0, 0),
        Status::Closing(close) => (2, Some(close.to_pb()), 0, 0),
        Status::Settled { how, at_ms } => {
            let how = match how {
                Settlement::Cooperative => 1,
                Settlement::Unilateral => 2,
                Settlement::Disputed => 3,
                Settlement::Abandoned => 4,
            };
            (3, None, how, *at_ms)
        }
    };
    pb::ChannelRecord {
        latest: Some(c.latest.to_pb()),
        pending: c.pending.as_ref().map(Proposal::to_pb),
        local: c.local.to_pb(),
        highest_signed: c.highest_signed,
        status,
        opened_at_ms: c.opened_at_ms,
        close,
        resolved: c
            .resolved
            .iter()
            .map(|(id, o)| pb::Resolved {
                escrow_id: id.0.to_vec(),
                outcome: match o {
                    Outcome::Released => 1,
                    Outcome::Refunded => 2,
                },
            })
            .collect(),
        settlement,
        settled_at_ms: settled_at,
        peer_highest: c.peer_highest,
        unconfirmed: c.unconfirmed.as_ref().map(Proposal::to_pb),
        release_intents: c.release_intents.iter().map(|e| e.0.to_vec()).collect(),
    }
    .encode_to_vec()
}

/// Decodes a channel from the ledger.
pub fn decode(bytes: &[u8]) -> Result<Channel, ChannelError> {
    let m = pb::ChannelRecord::decode(bytes).map_err(|_| ChannelError::Malformed)?;
    let latest = SignedState::from_pb(m.latest.ok_or(ChannelError::Malformed)?)?;
    let pending = m.pending.map(Proposal::from_pb).transpose()?;
    let local = Side::from_pb(m.local)?;
    let status = match m.status {
        0 => Status::Opening,
        1 => Status::Open,
        2 => Status::Closing(Box::new(SignedClose::open(
            m.close.ok_or(ChannelError::Malformed)?,
        )?)),
        3 => Status::Settled {
            how: match m.settlement {
                1 => Settlement::Cooperative,
                2 => Settlement::Unilateral,
                3 => Settlement::Disputed,
                4 => Settlement::Abandoned,
                _ => return Err(ChannelError::Malformed),
            },
            at_ms: m.settled_at_ms,
        },
        _ => return Err(ChannelError::Malformed),
    };
    let resolved = m
        .resolved
        .iter()
        .map(|r| {
            Ok((
                EscrowId::from_slice(&r.escrow_id)?,
                if r.outcome == 1 {
                    Outcome::Released
                } else {
                    Outcome::Refunded
                },
            ))
        })
        .collect::<Result<VecDeque<_>, ChannelError>>()?;
    let unconfirmed = m.unconfirmed.map(Proposal::from_pb).transpose()?;
    let release_intents = m
        .release_intents
        .iter()
        .map(|b| EscrowId::from_slice(b))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Channel {
        local,
        latest,
        pending,
        highest_signed: m.highest_signed,
        peer_highest: m.peer_highest,
        status,
        opened_at_ms: m.opened_at_ms,
        resolved,
        unconfirmed,
        release_intents,
    })
}
