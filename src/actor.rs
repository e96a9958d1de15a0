//! What every actor handle shares: a command sent over the actor's bounded channel and
//! answered over a oneshot.
//!
//! Each service (content, market, payments) is an actor that owns its state; its cheap,
//! cloneable handle sends it commands. [`ask`] is the one request helper they all use: a
//! full channel is waited on (back-pressure), and a stopped actor, whether the channel is
//! closed or the reply is dropped, is [`Stopped`], which each service's error converts from.

use tokio::sync::{mpsc, oneshot};

/// The actor has stopped (the node is shutting down): the command was not taken, or its
/// answer will never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the service has stopped")]
pub struct Stopped;

/// Sends the command `make` builds around a reply sender; returns the receiver of its answer.
pub async fn send<C, T>(
    commands: &mpsc::Sender<C>,
    make: impl FnOnce(oneshot::Sender<T>) -> C,
) -> Result<oneshot::Receiver<T>, Stopped> {
    let (tx, rx) = oneshot::channel();
    commands.send(make(tx)).await.map_err(|_| Stopped)?;
    Ok(rx)
}

/// Sends the command `make` builds and waits for its answer.
pub async fn ask<C, T>(
    commands: &mpsc::Sender<C>,
    make: impl FnOnce(oneshot::Sender<T>) -> C,
) -> Result<T, Stopped> {
    send(commands, make).await?.await.map_err(|_| Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_come_back_and_a_stopped_actor_is_stopped() {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<u32>>(1);
        let actor = tokio::spawn(async move {
            let reply = rx.recv().await.unwrap();
            reply.send(7).unwrap();
            // The next command's reply is dropped unanswered, then the actor stops.
            drop(rx.recv().await);
        });
        assert_eq!(ask(&tx, |r| r).await, Ok(7));
        assert_eq!(ask(&tx, |r| r).await, Err(Stopped));
        actor.await.unwrap();
        assert_eq!(ask(&tx, |r| r).await, Err(Stopped), "channel closed");
    }
}
