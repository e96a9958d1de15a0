//! The TCP transport, dialing from a fresh local port.
//!
//! libp2p-tcp binds every dial to the listen port by default (port reuse, for hole punching,
//! which this node does not do). Binding a dial to a port that other sockets share can fail
//! with `EADDRINUSE`, and libp2p-tcp retries on a new port only for `EADDRNOTAVAIL`: on a busy
//! host with many connections coming and going (the integration tests, 2 in 10 loaded runs),
//! a peer's every redial failed that way for more than 30 s. [`FreshPortDials`] makes every
//! dial take a new ephemeral port; nothing here needs the listen port as the source.

use std::pin::Pin;
use std::task::{Context, Poll};

use libp2p::Multiaddr;
use libp2p::core::Transport;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};

/// Wraps a transport so that every dial uses [`PortUse::New`].
#[derive(Debug)]
pub struct FreshPortDials<T>(pub T);

impl<T: Transport + Unpin> Transport for FreshPortDials<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        self.0.dial(
            addr,
            DialOpts {
                port_use: PortUse::New,
                ..opts
            },
        )
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}
