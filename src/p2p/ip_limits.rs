//! A per-IP cap on incoming connections still in the handshake.
//!
//! `connection_limits` caps pending incoming connections in total, so a single address that
//! opens sockets and never speaks can hold every slot until the handshake times out, and no
//! other peer gets in. This behaviour, first in the composed behaviour, refuses a new pending
//! connection from an address that already has `max_per_ip` of them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use super::addrs::ip_of;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionEstablished, ListenFailure};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use prometheus_client::metrics::counter::Counter;

/// The error a refused connection carries.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already has {limit} incoming connections in the handshake")]
pub struct TooManyPending {
    ip: IpAddr,
    limit: u32,
}

/// Counts pending incoming connections per remote IP and refuses those over the cap.
pub struct PendingPerIp {
    max_per_ip: u32,
    pending: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, u32>,
    refused: Counter,
}

impl PendingPerIp {
    /// At most `max_per_ip` pending incoming connections per address; refusals are counted
    /// in `refused`.
    pub fn new(max_per_ip: u32, refused: Counter) -> Self {
        Self {
            max_per_ip,
            pending: HashMap::new(),
            per_ip: HashMap::new(),
            refused,
        }
    }

    fn done(&mut self, connection: ConnectionId) {
        if let Some(ip) = self.pending.remove(&connection)
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl NetworkBehaviour for PendingPerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            self.refused.inc();
            return Err(ConnectionDenied::new(TooManyPending {
                ip,
                limit: self.max_per_ip,
            }));
        }
        *n += 1;
        self.pending.insert(connection_id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.done(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::ConnectionEstablished(ConnectionEstablished { connection_id, .. }) => {
                self.done(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_is_capped_and_others_still_get_in() {
        let refused = Counter::default();
        let mut b = PendingPerIp::new(2, refused.clone());
        let local = addr("/ip4/127.0.0.1/tcp/4001");
        let flood = addr("/ip4/127.0.0.2/tcp/5000");
        let ids: Vec<ConnectionId> = (0..4)
            .map(|_| ConnectionId::new_unchecked(rand::random()))
            .collect();
        assert!(
            b.handle_pending_inbound_connection(ids[0], &local, &flood)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(ids[1], &local, &flood)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(ids[2], &local, &flood)
                .is_err()
        );
        assert_eq!(refused.get(), 1);
        let other = addr("/ip4/127.0.0.1/tcp/6000");
        assert!(
            b.handle_pending_inbound_connection(ids[3], &local, &other)
                .is_ok()
        );
        // A finished handshake frees the slot.
        b.done(ids[0]);
        let again = ConnectionId::new_unchecked(rand::random());
        assert!(
            b.handle_pending_inbound_connection(again, &local, &flood)
                .is_ok()
        );
        // IPv4-mapped IPv6 counts as the same address.
        let mapped = addr("/ip6/::ffff:127.0.0.2/tcp/1");
        let more = ConnectionId::new_unchecked(rand::random());
        assert!(
            b.handle_pending_inbound_connection(more, &local, &mapped)
                .is_err()
        );
        b.done(ids[1]);
        b.done(again);
        assert!(
            !b.per_ip
                .contains_key(&"127.0.0.2".parse::<IpAddr>().unwrap())
        );
    }
}
