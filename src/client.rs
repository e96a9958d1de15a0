//! A client of a node's HTTP API, used by every command of the CLI that talks to a node
//! (`task`, `reputation`, `wallet`, `channel`, `load`): find the node (from its data dir or a
//! URL), submit and read tasks, fetch content, pay under a payment id, and drive a steady load.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::http::Page;
use crate::identity::TOKEN_FILE;
use crate::market::{PeerReputation, TaskRequest, TaskStatus, TaskView};
use crate::node::NODE_INFO_FILE;
use crate::payments::payment_ids::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use crate::payments::{ChannelView, PaymentView, WalletView};

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node's data dir does not say where it listens.
    #[error(
        "cannot read {path}: {reason} (is a node running with this data dir? start one with `zerostate node --data-dir ...`)"
    )]
    NodeInfo {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// An API address that is not `host:port` or an `http(s)://` URL without a path.
    #[error(
        "`{address}` is not a node's API address: {reason}; write host:port or a URL, e.g. 127.0.0.1:9464 or http://127.0.0.1:9464"
    )]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node could not be reached.
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The node answered with an error.
    #[error("the node answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// Its `error` message.
        message: String,
    },
    /// The node signed and sent the change, but the peer has not countersigned it yet (202
    /// with an `error` message, e.g. a close).
    #[error("pending: {message}")]
    Pending {
        /// What the node says.
        message: String,
    },
}

/// What a change to a channel (an open, a payment) came to.
#[derive(Debug, Clone)]
pub enum Change {
    /// Countersigned by the peer: the channel as it is now.
    Done {
        /// The channel.
        channel: ChannelView,
        /// Whether an earlier request with the same payment id made it (this one paid
        /// nothing).
        replayed: bool,
    },
    /// Signed and sent (or queued), not countersigned yet: the node keeps re-sending it
    /// (HTTP 202).
    Pending(PaymentView),
}

/// One node's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct NodeInfo {
    http: String,
}

#[derive(Deserialize)]
struct Submitted {
    id: String,
}

impl Client {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:9464`), with the API token for
    /// state-changing calls.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    /// A client of the API at `address`, `host:port` (plain HTTP) or an `http://` or
    /// `https://` URL without a path, as a user types it after `--api`.
    pub fn from_address(address: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = api_base(address).map_err(|reason| ClientError::BadAddress {
            address: address.to_owned(),
            reason,
        })?;
        Ok(Self::new(base.as_str(), token))
    }

    /// A client of the node running with `data_dir`: the address from its `node.json`, the
    /// token from its token file (if readable) unless `token` is given.
    pub fn from_data_dir(data_dir: &Path, token: Option<String>) -> Result<Self, ClientError> {
        let path = data_dir.join(NODE_INFO_FILE);
        let info: NodeInfo = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|reason| ClientError::NodeInfo {
                path: path.display().to_string(),
                reason,
            })?;
        let token = token.or_else(|| {
            std::fs::read_to_string(data_dir.join(TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_owned())
        });
        Ok(Self::new(&format!("http://{}", info.http), token))
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let (status, _, body) = self.fetch(request).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Api {
            status: status.as_u16(),
            message: format!("unexpected answer: {e}"),
        })
    }

    /// Sends `request` (with the token, if any); a success's status, headers and body, or
    /// the error it answered.
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<
        (
            reqwest::StatusCode,
            reqwest::header::HeaderMap,
            bytes::Bytes,
        ),
        ClientError,
    > {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(unreachable)?;
        let error = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        if !status.is_success() {
            let message = error.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        if let (reqwest::StatusCode::ACCEPTED, Some(message)) = (status, error) {
            return Err(ClientError::Pending { message });
        }
        Ok((status, headers, body))
    }

    /// Sends a change under `payment_id`: 202 is pending (a [`PaymentView`]), other
    /// successes are done (the channel).
    async fn change(
        &self,
        request: reqwest::RequestBuilder,
        payment_id: Option<&str>,
    ) -> Result<Change, ClientError> {
        let request = match payment_id {
            Some(id) => request.header(IDEMPOTENCY_KEY, id),
            None => request,
        };
        let (status, headers, body) = self.fetch(request).await?;
        let unexpected = |e: serde_json::Error| ClientError::Api {
            status: status.as_u16(),
            message: format!("unexpected answer: {e}"),
        };
        if status == reqwest::StatusCode::ACCEPTED {
            return serde_json::from_slice(&body)
                .map(Change::Pending)
                .map_err(unexpected);
        }
        let replayed = headers
            .get(IDEMPOTENT_REPLAYED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<bool>().ok())
            .unwrap_or(false);
        let channel = serde_json::from_slice(&body).map_err(unexpected)?;
        Ok(Change::Done { channel, replayed })
    }

    /// Content by its id, from the node's cache or, with the token, fetched by the node from
    /// the network and verified.
    pub async fn content(&self, id: &str) -> Result<bytes::Bytes, ClientError> {
        let url = format!("{}/api/v1/content/{id}", self.base);
        Ok(self.fetch(self.http.get(url)).await?.2)
    }

    /// Submits a task; returns its id.
    pub async fn submit(&self, request: &TaskRequest) -> Result<String, ClientError> {
        let url = format!("{}/api/v1/tasks", self.base);
        let s: Submitted = self.call(self.http.post(url).json(request)).await?;
        Ok(s.id)
    }

    /// A task.
    pub async fn task(&self, id: &str) -> Result<TaskView, ClientError> {
        let url = format!("{}/api/v1/tasks/{id}", self.base);
        self.call(self.http.get(url)).await
    }

    /// A page of tasks, newest first.
    pub async fn tasks(&self, offset: usize, limit: usize) -> Result<Page<TaskView>, ClientError> {
        let url = format!("{}/api/v1/tasks?offset={offset}&limit={limit}", self.base);
        self.call(self.http.get(url)).await
    }

    /// A page of the node's reputation records, most recently updated first.
    pub async fn reputation(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Page<PeerReputation>, ClientError> {
        let url = format!(
            "{}/api/v1/reputation?offset={offset}&limit={limit}",
            self.base
        );
        self.call(self.http.get(url)).await
    }

    /// The node's wallet.
    pub async fn wallet(&self) -> Result<WalletView, ClientError> {
        let url = format!("{}/api/v1/wallet", self.base);
        self.call(self.http.get(url)).await
    }

    /// A page of the node's channels, newest first.
    pub async fn channels(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Page<ChannelView>, ClientError> {
        let url = format!(
            "{}/api/v1/channels?offset={offset}&limit={limit}",
            self.base
        );
        self.call(self.http.get(url)).await
    }

    /// A channel.
    pub async fn channel(&self, id: &str) -> Result<ChannelView, ClientError> {
        let url = format!("{}/api/v1/channels/{id}", self.base);
        self.call(self.http.get(url)).await
    }

    /// Opens a channel to `peer_id` (under `payment_id`, so a retry with it never opens a
    /// second channel): done once the peer countersigned, else pending.
    pub async fn open_channel(
        &self,
        peer_id: &str,
        deposit: u64,
        peer_deposit: u64,
        payment_id: Option<&str>,
    ) -> Result<Change, ClientError> {
        let url = format!("{}/api/v1/channels", self.base);
        let body = serde_json::json!({
            "peer_id": peer_id,
            "deposit": deposit,
            "peer_deposit": peer_deposit,
        });
        self.change(self.http.post(url).json(&body), payment_id)
            .await
    }

    /// Pays `amount` in a channel (under `payment_id`, so a retry with it never pays twice):
    /// done once the peer countersigned, else pending.
    pub async fn pay(
        &self,
        id: &str,
        amount: u64,
        payment_id: Option<&str>,
    ) -> Result<Change, ClientError> {
        let url = format!("{}/api/v1/channels/{id}/pay", self.base);
        let body = serde_json::json!({ "amount": amount });
        self.change(self.http.post(url).json(&body), payment_id)
            .await
    }

    /// Closes a channel, cooperatively or unilaterally.
    pub async fn close_channel(
        &self,
        id: &str,
        unilateral: bool,
    ) -> Result<ChannelView, ClientError> {
        let url = format!("{}/api/v1/channels/{id}/close", self.base);
        let body = serde_json::json!({ "unilateral": unilateral });
        self.call(self.http.post(url).json(&body)).await
    }
}

/// The base URL of the API at `address`: `host:port` means plain HTTP; a URL must be
/// `http` or `https`, with a host and without a path, query or fragment.
fn api_base(address: &str) -> Result<url::Url, String> {
    let address = address.trim();
    let url = if address.contains("://") {
        url::Url::parse(address)
    } else {
        url::Url::parse(&format!("http://{address}"))
    }
    .map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme is `{}`, not http or https",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err("there is no host".into());
    }
    let has_path = url
        .path_segments()
        .is_some_and(|mut s| s.any(|segment| !segment.is_empty()));
    if has_path || url.query().is_some() || url.fragment().is_some() {
        return Err("an API address has no path (the client adds /api/v1/...)".into());
    }
    Ok(url)
}

/// Counts of a load run, and latencies of finished tasks.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    /// Tasks submitted.
    pub submitted: usize,
    /// Submissions the node refused.
    pub refused: usize,
    /// Tasks that succeeded.
    pub completed: usize,
    /// Tasks that failed or timed out.
    pub failed: usize,
    /// Submitted-to-verified latencies of the tasks that succeeded, by the node's clock
    /// (from the task's own timestamps, so polling adds nothing), milliseconds, unsorted.
    pub latencies_ms: Vec<u64>,
}

impl LoadStats {
    /// Tasks not finished yet.
    pub fn running(&self) -> usize {
        self.submitted - self.completed - self.failed
    }

    /// The `q`-quantile (0..=1) of the latencies, nearest rank.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let mut l = self.latencies_ms.clone();
        if l.is_empty() {
            return None;
        }
        l.sort_unstable();
        let rank = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len());
        Some(l[rank - 1])
    }

    /// One line: counts and p50/p99.
    pub fn line(&self) -> String {
        let q = |q| self.quantile_ms(q).map_or("-".into(), |v| v.to_string());
        format!(
            "submitted={} completed={} failed={} running={} refused={} p50_ms={} p99_ms={}",
            self.submitted,
            self.completed,
            self.failed,
            self.running(),
            self.refused,
            q(0.5),
            q(0.99)
        )
    }
}

/// Submits `make(i)` at `rate` per second for `duration`, round-robin over `clients`,
/// polls every task until it ends (at most `drain` after the last submission), and calls
/// `progress` about once a second.
pub async fn run_load(
    clients: &[Client],
    rate: f64,
    duration: Duration,
    drain: Duration,
    make: impl Fn(usize) -> TaskRequest,
    mut progress: impl FnMut(&LoadStats, Duration),
) -> LoadStats {
    let mut stats = LoadStats::default();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut next_submit = tokio::time::Instant::now();
    let mut next_report = started + Duration::from_secs(1);
    let mut next_poll = tokio::time::Instant::now();
    // (client index, task id, submitted at)
    let mut open: Vec<(usize, String, Instant)> = Vec::new();
    let mut i = 0;
    loop {
        let submitting = started.elapsed() < duration;
        if !submitting && (open.is_empty() || started.elapsed() >= duration + drain) {
            break;
        }
        let now = tokio::time::Instant::now();
        if submitting && now >= next_submit {
            let c = i % clients.len().max(1);
            match clients[c].submit(&make(i)).await {
                Ok(id) => {
                    stats.submitted += 1;
                    open.push((c, id, Instant::now()));
                }
                Err(e) => {
                    stats.refused += 1;
                    tracing::warn!(error = %e, "submission refused");
                }
            }
            i += 1;
            next_submit += interval;
            continue;
        }
        if now >= next_poll {
            // All open tasks at once: a slow poll must not hold up the measurement.
            let polls = open.iter().map(|(c, id, _)| clients[*c].task(id));
            let answers = futures::future::join_all(polls).await;
            let mut still = Vec::with_capacity(open.len());
            for ((c, id, at), answer) in open.drain(..).zip(answers) {
                match answer {
                    Ok(t) if t.status == TaskStatus::Success => {
                        stats.completed += 1;
                        let ms = t.finished_ms.unwrap_or(0).saturating_sub(t.submitted_ms);
                        stats.latencies_ms.push(ms);
                    }
                    Ok(t) if t.status.is_final() => stats.failed += 1,
                    _ => still.push((c, id, at)),
                }
            }
            open = still;
            next_poll = tokio::time::Instant::now() + Duration::from_millis(100);
        }
        if Instant::now() >= next_report {
            progress(&stats, started.elapsed());
            next_report += Duration::from_secs(1);
        }
        let wake = if submitting {
            next_submit.min(next_poll)
        } else {
            next_poll
        };
        tokio::time::sleep_until(wake).await;
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_addresses_may_omit_the_scheme() {
        for (given, base) in [
            ("127.0.0.1:9464", "http://127.0.0.1:9464"),
            (" localhost:9464 ", "http://localhost:9464"),
            ("http://127.0.0.1:9464/", "http://127.0.0.1:9464"),
            ("https://node.example", "https://node.example"),
            ("[::1]:9464", "http://[::1]:9464"),
        ] {
            let client = Client::from_address(given, None).unwrap();
            assert_eq!(client.base(), base, "{given}");
        }
    }

    #[test]
    fn a_bad_api_address_says_what_is_wrong_and_what_to_write() {
        for (given, why) in [
            ("ftp://127.0.0.1:21", "the scheme is `ftp`"),
            ("127.0.0.1:notaport", "invalid port"),
            ("http://127.0.0.1:9464/api/v1", "no path"),
            ("", "empty host"),
        ] {
            let e = Client::from_address(given, None).unwrap_err().to_string();
            assert!(e.contains(&format!("`{}`", given)), "{e}");
            assert!(e.contains(why), "{given}: {e}");
            assert!(e.contains("e.g. 127.0.0.1:9464"), "{e}");
        }
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let stats = LoadStats {
            submitted: 4,
            completed: 4,
            latencies_ms: vec![40, 10, 30, 20],
            ..LoadStats::default()
        };
        assert_eq!(stats.quantile_ms(0.5), Some(20));
        assert_eq!(stats.quantile_ms(0.99), Some(40));
        assert_eq!(LoadStats::default().quantile_ms(0.5), None);
        assert!(stats.line().contains("p50_ms=20 p99_ms=40"));
    }
}
