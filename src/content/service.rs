//! The content service: an actor that owns the [`ContentCache`].
//!
//! [`ContentService`] is the cheap, cloneable handle (what the HTTP API uses): `put`, `get`
//! (cache, then, if allowed, the network) and `has`. [`ContentActor`] is the one task that
//! owns the cache. It also answers the `/zerostate/content/2` requests the swarm's event
//! loop routes to its inbox. Hashing never happens on the actor or on the swarm's task: a
//! `put`, a re-verification on read and a fetched object are verified on the blocking pool,
//! and the result comes back to the actor as a job. Concurrent `get`s of one id share one
//! fetch; a fetch that panics still answers its waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{self, JoinSet};
use tokio_util::sync::CancellationToken;

use super::cache::{CacheError, ContentCache, Lookup, Origin, Verified, Verifier};
use super::fetch::Fetcher;
use super::ranking::ProviderRanking;
use super::{ContentConfig, ContentError, ContentMetrics};
use crate::content_id::ContentId;
use crate::p2p::{ContentRequest, ContentResponse, InboundRequest, P2pHandle, Payload};

/// Capacity of the service's command queue (HTTP calls).
const COMMAND_QUEUE: usize = 256;
/// Capacity of the inbox of peers' requests; when full, the event loop refuses requests.
pub const INBOX: usize = 256;
/// Most fetches from the network running at once; more get [`ContentError::Busy`].
const MAX_INFLIGHT_FETCHES: usize = 256;

type Waiter = oneshot::Sender<Result<Bytes, ContentError>>;

enum Command {
    Put {
        data: Bytes,
        reply: oneshot::Sender<Result<ContentId, ContentError>>,
    },
    Get {
        id: ContentId,
        network: bool,
        reply: Waiter,
    },
    Has {
        id: ContentId,
        reply: oneshot::Sender<bool>,
    },
}

/// Who waits for a re-verified read.
enum Reader {
    Api {
        reply: Waiter,
        /// Whether the caller may fetch from the network.
        network: bool,
    },
    Peer(oneshot::Sender<ContentResponse>),
}

/// Work that ran off the actor and comes back to it.
enum Job {
    Put {
        verified: Result<Verified, CacheError>,
        reply: oneshot::Sender<Result<ContentId, ContentError>>,
    },
    Recheck {
        id: ContentId,
        data: Bytes,
        ok: bool,
        reader: Reader,
    },
    Fetched {
        id: ContentId,
        result: Result<Verified, ContentError>,
    },
}

/// The handle to the content actor.
#[derive(Clone)]
pub struct ContentService {
    commands: mpsc::Sender<Command>,
    ranking: Arc<Mutex<ProviderRanking>>,
    max_object_bytes: u64,
}

/// The task that owns the cache. Create with [`ContentService::new`], run with
/// [`ContentActor::run`].
pub struct ContentActor {
    cache: ContentCache,
    verifier: Verifier,
    fetcher: Fetcher,
    commands: mpsc::Receiver<Command>,
    inbox: mpsc::Receiver<InboundRequest<ContentRequest, ContentResponse>>,
    jobs: JoinSet<Job>,
    inflight: Inflight,
}

impl ContentService {
    /// A service around `cache`, fetching through `p2p`. Returns the handle, the actor (to
    /// spawn) and the inbox sender for the event loop's routes.
    pub fn new(
        cache: ContentCache,
        p2p: P2pHandle,
        config: ContentConfig,
        metrics: ContentMetrics,
    ) -> (Self, ContentActor, crate::p2p::ContentInbox) {
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (inbox_tx, inbox) = mpsc::channel(INBOX);
        let ranking = Arc::new(Mutex::new(ProviderRanking::default()));
        let verifier = cache.verifier();
        let handle = Self {
            commands: commands_tx,
            ranking: ranking.clone(),
            max_object_bytes: config.max_object_bytes,
        };
        let actor = ContentActor {
            cache,
            verifier: verifier.clone(),
            fetcher: Fetcher {
                p2p,
                verifier,
                ranking,
                metrics,
                config,
            },
            commands,
            inbox,
            jobs: JoinSet::new(),
            inflight: Inflight::default(),
        };
        (handle, actor, inbox_tx)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ContentError> {
        Ok(crate::actor::ask(&self.commands, make).await?)
    }

    /// Stores `data` and announces this node as a provider. Returns its id.
    pub async fn put(&self, data: Bytes) -> Result<ContentId, ContentError> {
        let max = self.max_object_bytes;
        if data.len() as u64 > max {
            return Err(ContentError::TooLarge {
                size: data.len() as u64,
                max,
            });
        }
        self.ask(|reply| Command::Put { data, reply }).await?
    }

    /// Whether this node holds `id` (no network access).
    pub async fn has(&self, id: ContentId) -> Result<bool, ContentError> {
        self.ask(|reply| Command::Has { id, reply }).await
    }

    /// The content from the cache; if absent and `network` is true, fetched from the network
    /// and verified (bounded by `content.fetch_timeout_ms`), otherwise
    /// [`ContentError::NotCached`].
    pub async fn get(&self, id: ContentId, network: bool) -> Result<Bytes, ContentError> {
        self.ask(|reply| Command::Get { id, network, reply })
            .await?
    }

    /// How often `peer` sent content that failed verification.
    pub fn mismatches(&self, peer: &PeerId) -> u32 {
        self.ranking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mismatches(peer)
    }
}

impl ContentActor {
    /// Runs until `cancel` fires or every handle is gone.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(request) = self.inbox.recv() => self.serve(request),
                Some(done) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    match done {
                        Ok((_, job)) => self.on_job(job).await,
                        Err(e) => self.inflight.task_failed(e.id(), &e.to_string()),
                    }
                }
            }
        }
        self.jobs.shutdown().await;
        tracing::debug!("content service stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Put { data, reply } => {
                let verifier = self.verifier.clone();
                self.jobs.spawn_blocking(move || Job::Put {
                    verified: Ok(verifier.identify(data)),
                    reply,
                });
            }
            Command::Has { id, reply } => {
                let _ = reply.send(self.cache.contains(&id));
            }
            Command::Get { id, network, reply } => match self.cache.lookup(&id) {
                Lookup::Hit(data) => {
                    let _ = reply.send(Ok(data));
                }
                Lookup::Recheck(data) => {
                    self.recheck(id, data, Reader::Api { reply, network });
                }
                Lookup::Miss if !network => {
                    let _ = reply.send(Err(ContentError::NotCached { id }));
                }
                Lookup::Miss => self.start_fetch(id, reply),
            },
        }
    }

    /// Answers a peer's request for content.
    fn serve(&mut self, request: InboundRequest<ContentRequest, ContentResponse>) {
        let InboundRequest {
            request: ContentRequest(id),
            reply,
            ..
        } = request;
        match self.cache.lookup(&id) {
            Lookup::Hit(data) => self.send_to_peer(reply, data),
            Lookup::Recheck(data) => self.recheck(id, data, Reader::Peer(reply)),
            Lookup::Miss => {
                let _ = reply.send(ContentResponse::NotFound);
            }
        }
    }

    fn send_to_peer(&self, reply: oneshot::Sender<ContentResponse>, data: Bytes) {
        let len = data.len() as u64;
        if reply
            .send(ContentResponse::Found(Payload::new(data)))
            .is_ok()
        {
            self.fetcher.metrics.bytes_served.inc_by(len);
        }
    }

    fn recheck(&mut self, id: ContentId, data: Bytes, reader: Reader) {
        let verifier = self.verifier.clone();
        self.jobs.spawn_blocking(move || {
            let ok = verifier.check(&id, &data).is_ok();
            Job::Recheck {
                id,
                data,
                ok,
                reader,
            }
        });
    }

    fn start_fetch(&mut self, id: ContentId, reply: Waiter) {
        if self.inflight.join(id, reply) {
            return;
        }
        if self.inflight.fetches() >= MAX_INFLIGHT_FETCHES {
            self.inflight.finish(id, Err(ContentError::Busy));
            return;
        }
        let fetcher = self.fetcher.clone();
        let limit = Duration::from_millis(fetcher.config.fetch_timeout_ms);
        let handle = self.jobs.spawn(async move {
            let result = match tokio::time::timeout(limit, fetcher.fetch(id)).await {
                Ok(result) => result,
                Err(_) => {
                    fetcher.metrics.fetch("not_found");
                    Err(ContentError::TimedOut {
                        id,
                        after_ms: fetcher.config.fetch_timeout_ms,
                    })
                }
            };
            Job::Fetched { id, result }
        });
        self.inflight.started(handle.id(), id);
    }

    async fn on_job(&mut self, job: Job) {
        match job {
            Job::Put { verified, reply } => {
                let result = match verified {
                    Ok(verified) => {
                        let id = verified.id();
                        self.keep(verified, Origin::Local).await.map(|()| id)
                    }
                    Err(e) => Err(too_large_or_bug(e)),
                };
                let _ = reply.send(result);
            }
            Job::Recheck {
                id,
                data,
                ok,
                reader,
            } => {
                if ok {
                    self.cache.recheck_passed();
                } else {
                    self.cache.recheck_failed(&id, &data);
                }
                match (reader, ok) {
                    (Reader::Api { reply, .. }, true) => {
                        let _ = reply.send(Ok(data));
                    }
                    (Reader::Peer(reply), true) => self.send_to_peer(reply, data),
                    (Reader::Peer(reply), false) => {
                        let _ = reply.send(ContentResponse::NotFound);
                    }
                    // Our own copy went bad: fetch a good one, if the caller may.
                    (
                        Reader::Api {
                            reply,
                            network: true,
                        },
                        false,
                    ) => self.start_fetch(id, reply),
                    (
                        Reader::Api {
                            reply,
                            network: false,
                        },
                        false,
                    ) => {
                        let _ = reply.send(Err(ContentError::NotCached { id }));
                    }
                }
            }
            Job::Fetched { id, result } => {
                let result = match result {
                    Ok(verified) => {
                        let data = verified.data().clone();
                        match self.keep(verified, Origin::Peer).await {
                            // Larger than the whole cache: verified, returned, not kept.
                            Ok(()) | Err(ContentError::TooLarge { .. }) => Ok(data),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                self.inflight.finish(id, result);
            }
        }
    }

    /// Stores verified content and keeps the provider records in step with the cache:
    /// announce what was stored, withdraw what was evicted.
    async fn keep(&mut self, content: Verified, origin: Origin) -> Result<(), ContentError> {
        let id = content.id();
        let evicted = self
            .cache
            .insert_verified(content, origin)
            .map_err(too_large_or_bug)?;
        // Fails only when the node is shutting down, when provider records no longer matter.
        let _ = self.fetcher.p2p.update_provided(vec![id], evicted).await;
        Ok(())
    }
}

/// The cache refuses verified content only for its size.
fn too_large_or_bug(e: CacheError) -> ContentError {
    match e {
        CacheError::TooLarge { size, max } => ContentError::TooLarge { size, max },
        CacheError::Mismatch { .. } => unreachable!("only verified content reaches the cache: {e}"),
    }
}

/// Fetches under way: who waits for each id, and which task fetches it.
#[derive(Default)]
struct Inflight {
    waiters: HashMap<ContentId, Vec<Waiter>>,
    tasks: HashMap<task::Id, ContentId>,
}

impl Inflight {
    /// Adds a waiter for `id`; returns true if a fetch of `id` is already running.
    fn join(&mut self, id: ContentId, waiter: Waiter) -> bool {
        let waiters = self.waiters.entry(id).or_default();
        waiters.push(waiter);
        waiters.len() > 1
    }

    /// Number of fetches running.
    fn fetches(&self) -> usize {
        self.tasks.len()
    }

    /// The fetch of `id` runs as `task`.
    fn started(&mut self, task: task::Id, id: ContentId) {
        self.tasks.insert(task, id);
    }

    /// Answers every waiter of `id`.
    fn finish(&mut self, id: ContentId, result: Result<Bytes, ContentError>) {
        self.tasks.retain(|_, v| *v != id);
        for waiter in self.waiters.remove(&id).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }

    /// A task ended without a result (it panicked or was cancelled): if it was a fetch,
    /// its waiters get an error and the id can be fetched again.
    fn task_failed(&mut self, task: task::Id, why: &str) {
        if let Some(id) = self.tasks.remove(&task) {
            tracing::error!(%id, error = why, "content fetch task failed");
            self.finish(id, Err(ContentError::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fetch_task_that_panics_answers_its_waiters_and_leaves_no_entry() {
        let mut inflight = Inflight::default();
        let mut jobs: JoinSet<()> = JoinSet::new();
        let id = ContentId::of(b"x");
        let (a, a_rx) = oneshot::channel();
        let (b, b_rx) = oneshot::channel();
        assert!(!inflight.join(id, a), "the first waiter starts the fetch");
        assert!(inflight.join(id, b), "the second shares it");
        let handle = jobs.spawn(async { panic!("fetch bug") });
        inflight.started(handle.id(), id);
        assert_eq!(inflight.fetches(), 1);

        let err = jobs.join_next_with_id().await.unwrap().unwrap_err();
        assert!(err.is_panic());
        inflight.task_failed(err.id(), &err.to_string());

        assert!(matches!(a_rx.await, Ok(Err(ContentError::Stopped))));
        assert!(matches!(b_rx.await, Ok(Err(ContentError::Stopped))));
        assert_eq!(inflight.fetches(), 0);
        assert!(inflight.waiters.is_empty());
        let (c, _c_rx) = oneshot::channel();
        assert!(!inflight.join(id, c), "the id can be fetched again");
    }
}
