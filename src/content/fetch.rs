//! One fetch of content from the network, hedged.
//!
//! Candidates are the providers Kademlia finds (within half the fetch budget) and the
//! connected peers, ordered by [`ProviderRanking`]. Each candidate gets its own deadline
//! (`content.request_timeout_ms`), well under the whole budget; when the peers asked so far
//! have not answered within `content.hedge_after_ms`, the next one is asked too, with at
//! most `content.max_parallel_requests` in flight; a failure starts the next one at once.
//! A peer that never answers therefore costs one deadline, not the fetch. Every outcome is
//! recorded in the ranking (timeouts and lies included), and the bytes are verified on the
//! blocking pool before they are returned.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use tokio::time::Instant;

use super::cache::{Verified, Verifier};
use super::ranking::{Outcome, ProviderRanking};
use super::{ContentConfig, ContentError, ContentMetrics};
use crate::content_id::ContentId;
use crate::p2p::{Content, ContentRequest, ContentResponse, P2pHandle, RequestError};

/// Everything one fetch needs.
#[derive(Clone)]
pub struct Fetcher {
    /// The swarm.
    pub p2p: P2pHandle,
    /// Hashes what arrives.
    pub verifier: Verifier,
    /// Records and orders peers.
    pub ranking: Arc<Mutex<ProviderRanking>>,
    /// Counters.
    pub metrics: ContentMetrics,
    /// Limits and deadlines.
    pub config: ContentConfig,
}

impl Fetcher {
    fn record(&self, peer: PeerId, outcome: Outcome) {
        self.ranking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(peer, outcome);
    }

    /// Finds candidates for `id`, best first.
    async fn candidates(&self, id: ContentId) -> Result<Vec<PeerId>, ContentError> {
        let local = self.p2p.local_peer_id();
        // The DHT gets half the budget; connected peers are asked either way.
        let dht_budget = Duration::from_millis(self.config.fetch_timeout_ms / 2);
        let mut candidates =
            match tokio::time::timeout(dht_budget, self.p2p.find_providers(id)).await {
                Ok(found) => found.map_err(|_| ContentError::Stopped)?,
                Err(_) => Vec::new(),
            };
        for peer in self
            .p2p
            .connected_peers()
            .await
            .map_err(|_| ContentError::Stopped)?
        {
            if !candidates.contains(&peer) {
                candidates.push(peer);
            }
        }
        candidates.retain(|p| *p != local);
        let mut ranked = self
            .ranking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rank(candidates, &mut rand::thread_rng());
        ranked.truncate(self.config.max_candidates);
        Ok(ranked)
    }

    /// Fetches `id`: the verified content, or why there is none. Bounded by the caller.
    pub async fn fetch(&self, id: ContentId) -> Result<Verified, ContentError> {
        let candidates = self.candidates(id).await?;
        let asked = candidates.len();
        let mut queue = candidates.into_iter();
        let per_request = Duration::from_millis(self.config.request_timeout_ms);
        let hedge_after = Duration::from_millis(self.config.hedge_after_ms);
        let max_parallel = self.config.max_parallel_requests.max(1);
        let mut inflight = FuturesUnordered::new();
        let mut bad = 0;
        let mut next_hedge = Instant::now();
        // Candidates asked and not answered yet, with when they were asked.
        let mut pending: Vec<(PeerId, Instant)> = Vec::new();
        loop {
            // Ask the next candidate when nothing is in flight, or when the hedge is due.
            if inflight.len() < max_parallel
                && (inflight.is_empty() || Instant::now() >= next_hedge)
                && let Some(peer) = queue.next()
            {
                let p2p = self.p2p.clone();
                pending.push((peer, Instant::now()));
                inflight.push(async move {
                    let request = p2p.request::<Content>(peer, ContentRequest(id));
                    let result = tokio::time::timeout(per_request, request)
                        .await
                        .unwrap_or(Err(RequestError::Timeout));
                    (peer, result)
                });
                next_hedge = Instant::now() + hedge_after;
                continue;
            }
            if inflight.is_empty() {
                break;
            }
            let more = queue.len() > 0 && inflight.len() < max_parallel;
            let answer = tokio::select! {
                Some(answer) = inflight.next() => answer,
                _ = tokio::time::sleep_until(next_hedge), if more => continue,
            };
            let (peer, result) = answer;
            let took = pending
                .iter()
                .position(|(p, _)| *p == peer)
                .map(|i| pending.swap_remove(i).1.elapsed())
                .unwrap_or_default();
            match self.judge(id, peer, took, result).await {
                Judged::Content(verified) => {
                    // Peers still silent after the hedge delay, while another answered, are
                    // abandoned: that counts against them as a timeout.
                    for (slow, since) in pending {
                        if since.elapsed() >= hedge_after {
                            self.metrics.provider_failure("timeout");
                            self.record(slow, Outcome::Timeout);
                        }
                    }
                    return Ok(verified);
                }
                Judged::Lied => bad += 1,
                Judged::Nothing => {}
            }
        }
        if bad > 0 {
            self.metrics.fetch("invalid");
            Err(ContentError::Invalid { id, bad })
        } else {
            self.metrics.fetch("not_found");
            Err(ContentError::NotFound { id, asked })
        }
    }

    /// Verifies and records one candidate's answer.
    async fn judge(
        &self,
        id: ContentId,
        peer: PeerId,
        took: Duration,
        result: Result<ContentResponse, RequestError>,
    ) -> Judged {
        let payload = match result {
            Ok(ContentResponse::Found(payload)) => payload,
            Ok(ContentResponse::NotFound) => {
                self.metrics.provider_failure("not_found");
                self.record(peer, Outcome::NotFound);
                return Judged::Nothing;
            }
            Err(e) => {
                tracing::debug!(%peer, %id, error = %e, "content request failed");
                let (reason, outcome) = match e {
                    RequestError::Timeout => ("timeout", Outcome::Timeout),
                    RequestError::Malformed(_) => ("malformed", Outcome::Failed),
                    RequestError::Budget => ("budget", Outcome::NotFound),
                    _ => ("error", Outcome::Failed),
                };
                self.metrics.provider_failure(reason);
                self.record(peer, outcome);
                return Judged::Nothing;
            }
        };
        let verifier = self.verifier.clone();
        let data = payload.bytes().clone();
        let len = data.len() as u64;
        // The payload (and its place in the receive budget) lives until hashing is done.
        let verified = tokio::task::spawn_blocking(move || verifier.verify(id, data))
            .await
            .map_err(|_| ())
            .and_then(|r| r.map_err(|_| ()));
        drop(payload);
        match verified {
            Ok(verified) => {
                self.record(peer, Outcome::Served(took));
                self.metrics.bytes_fetched.inc_by(len);
                self.metrics.fetch("fetched");
                tracing::debug!(%peer, %id, bytes = len, "fetched content");
                Judged::Content(verified)
            }
            Err(()) => {
                self.metrics.provider_failure("mismatch");
                self.record(peer, Outcome::Mismatch);
                tracing::warn!(%peer, %id, "provider sent content that does not match its id");
                Judged::Lied
            }
        }
    }
}

enum Judged {
    Content(Verified),
    Lied,
    Nothing,
}
