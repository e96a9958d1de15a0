//! End to end: five node processes started by `scripts/devnet.sh` from the built binary,
//! loaded with tasks by `devnet.sh load`, scraped by a real Prometheus server through the
//! devnet's generated config.
//!
//! Needs `prometheus` on PATH (or `PROMETHEUS_BIN`); `scripts/test.sh` installs Debian's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Stops Prometheus and the devnet even when an assertion fails.
struct Cleanup {
    devnet_dir: PathBuf,
    prometheus: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut p) = self.prometheus.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = devnet(&self.devnet_dir, &["down"]);
    }
}

fn devnet(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(format!("{REPO}/scripts/devnet.sh"))
        .args(args)
        .env("DEVNET_DIR", dir)
        .env("ZEROSTATE_BIN", env!("CARGO_BIN_EXE_zerostate"))
        .env("DEVNET_SCRAPE_INTERVAL", "1s")
        .env("DEVNET_TIMEOUT", "120")
        .output()
        .expect("devnet.sh runs")
}

fn prometheus_bin() -> String {
    std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs an instant query; returns the result vector.
async fn query(client: &reqwest::Client, base: &str, q: &str) -> Option<Vec<serde_json::Value>> {
    let resp = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = resp.json().await.ok()?;
    assert_ne!(body["status"], "error", "query {q} failed: {body}");
    body["data"]["result"].as_array().cloned()
}

/// Runs `zerostate ARGS --data-dir DIR` against a devnet node, with its own token.
fn node_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zerostate"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("ZEROSTATE_API_TOKEN")
        .output()
        .unwrap()
}

/// The operator queries of docs/METRICS.md about the economy: auctions, bids, tasks,
/// reputation, channels, payments, settlements and escrow.
fn economic_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(format!("{REPO}/docs/METRICS.md")).unwrap();
    let section = doc
        .split("## Operator queries")
        .nth(1)
        .expect("docs/METRICS.md has an Operator queries section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split("` |").next())
        .filter(|q| q.contains("zerostate_economic_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_five_node_devnet_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let devnet_dir = dir.path().join("devnet");
    let mut cleanup = Cleanup {
        devnet_dir: devnet_dir.clone(),
        prometheus: None,
    };

    let up = devnet(&devnet_dir, &["up", "5"]);
    assert!(
        up.status.success(),
        "devnet up failed:\n{}\n{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    for file in ["nodes.json", "targets.json", "prometheus.yml"] {
        assert!(devnet_dir.join(file).exists(), "{file} written");
    }
    let nodes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(devnet_dir.join("nodes.json")).unwrap()).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 5);

    let port = free_port();
    let prometheus = Command::new(prometheus_bin())
        .arg(format!(
            "--config.file={}",
            devnet_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); install Debian's prometheus package or run scripts/test.sh",
                prometheus_bin()
            )
        });
    cleanup.prometheus = Some(prometheus);

    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut up_ok, mut info_ok) = (false, false);
    while Instant::now() < deadline && !(up_ok && info_ok) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(result) = query(&client, &base, r#"up{job="zerostate"}"#).await {
            up_ok = result.len() == 5 && result.iter().all(|r| r["value"][1] == "1");
        }
        if let Some(result) = query(&client, &base, "zerostate_build_info").await {
            let nodes: std::collections::HashSet<_> = result
                .iter()
                .map(|r| r["metric"]["instance"].clone())
                .collect();
            info_ok = nodes.len() == 5
                && result
                    .iter()
                    .all(|r| r["metric"]["version"] == env!("CARGO_PKG_VERSION"));
        }
    }
    assert!(up_ok, "up == 1 for all five targets");
    assert!(info_ok, "zerostate_build_info present for each node");

    // The nodes found each other: each reports at least two connected peers.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let result = query(&client, &base, "zerostate_p2p_connection_pool_size >= 2").await;
        if result.as_ref().is_some_and(|r| r.len() == 5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every node has 2 peers: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A live market: every node requests and provides.
    let load = devnet(&devnet_dir, &["load", "--rate", "4", "--duration", "8"]);
    let out = String::from_utf8_lossy(&load.stdout);
    assert!(
        load.status.success(),
        "devnet load failed:\n{out}\n{}",
        String::from_utf8_lossy(&load.stderr)
    );
    assert!(out.contains("summary: submitted="), "{out}");
    // And a task nobody bids on (its maximum price is below every provider's price): the
    // error families move because a task really failed.
    let submit = node_cli(
        &devnet_dir.join("node-1"),
        &[
            "task",
            "submit",
            "--kind",
            "pow",
            "--difficulty",
            "4",
            "--max-price",
            "1",
        ],
    );
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );

    // The tasks were paid through channels: a channel closed through the CLI settles, so
    // every payment family has moved for a real reason.
    let cli = |args: &[&str]| {
        let out = node_cli(&devnet_dir.join("node-1"), args);
        assert!(
            out.status.success(),
            "zerostate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A channel of node 1 with no escrow left locked closes cooperatively.
        let page = cli(&["channel", "list"]);
        let idle = page["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["status"] == "open" && c["locks"].as_array().unwrap().is_empty());
        if let Some(c) = idle {
            let closed = cli(&["channel", "close", c["id"].as_str().unwrap()]);
            assert_eq!(closed["settlement"], "cooperative", "{closed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 has an idle channel: {page}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let wallet = cli(&["wallet"]);
    assert!(wallet["available"].as_u64().unwrap() > 0, "{wallet}");

    // The tasks were paid through channels: on every node, what left its channels (deposits
    // less balances less its locks still held) is what it paid for its verified tasks less
    // what it earned executing others' (a node pays a provider from whichever channel with
    // it holds enough, its own or the provider's).
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients: Vec<_> = (1..=5)
        .map(|i| {
            let dir = devnet_dir.join(format!("node-{i}"));
            let info: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("node.json")).unwrap()).unwrap();
            let peer = info["peer_id"].as_str().unwrap().to_owned();
            (
                peer,
                zerostate::client::Client::from_data_dir(&dir, None).unwrap(),
            )
        })
        .collect();
    loop {
        // (requester index, task) of every verified task.
        let mut verified = Vec::new();
        for (i, (_, client)) in clients.iter().enumerate() {
            let tasks = client.tasks(0, 500).await.unwrap().tasks;
            verified.extend(
                tasks
                    .into_iter()
                    .filter(|t| t.status == "success")
                    .map(|t| (i, t)),
            );
        }
        let mut mismatched = Vec::new();
        for (i, (peer, client)) in clients.iter().enumerate() {
            let paid: u64 = verified
                .iter()
                .filter(|(r, _)| *r == i)
                .filter_map(|(_, t)| t.price)
                .sum();
            let earned: u64 = verified
                .iter()
                .filter(|(_, t)| t.winner.as_deref() == Some(peer.as_str()))
                .filter_map(|(_, t)| t.price)
                .sum();
            let channels = client.channels(0, 500).await.unwrap().channels;
            let out: i128 = channels
                .iter()
                .map(|c| {
                    let locked: u64 = c.locks.iter().filter(|l| l.ours).map(|l| l.amount).sum();
                    i128::from(c.deposit) - i128::from(c.balance) - i128::from(locked)
                })
                .sum();
            if out != i128::from(paid) - i128::from(earned) {
                mismatched.push(format!(
                    "node-{}: out {out}, paid {paid}, earned {earned}",
                    i + 1
                ));
            }
        }
        let total: u64 = verified.iter().filter_map(|(_, t)| t.price).sum();
        if mismatched.is_empty() {
            assert!(total > 0, "the tasks were paid through channels");
            break;
        }
        assert!(Instant::now() < deadline, "{mismatched:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every economic query of docs/METRICS.md returns data.
    let queries = economic_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for q in &queries {
            if query(&client, &base, q).await.is_none_or(|r| r.is_empty()) {
                empty.push(q.clone());
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries without data: {empty:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The expression of PaymentChannelLeaks (without its threshold) evaluates to a value on
    // the live devnet: it cannot silently match nothing, as the old rule did.
    let rules = std::fs::read_to_string(format!("{REPO}/config/prometheus/rules.yml")).unwrap();
    let leak = rules
        .split("alert: PaymentChannelLeaks")
        .nth(1)
        .and_then(|r| r.split("expr: |").nth(1))
        .and_then(|r| r.split(") > 10").next())
        .map(|e| format!("{})", e.trim()))
        .expect("rules.yml has PaymentChannelLeaks");
    let value = query(&client, &base, &leak).await.unwrap_or_default();
    assert_eq!(value.len(), 1, "{leak} -> {value:?}");
    // And both of its sides have data of their own (`or vector(0)` would hide a misspelled
    // metric): channels were opened for the tasks, and one was settled through the CLI.
    let sides: Vec<String> = leak
        .match_indices("sum(rate(")
        .map(|(i, _)| {
            let end = i + leak[i..].find("]))").expect("a sum(rate(...[w])) term") + 3;
            leak[i..end].to_owned()
        })
        .collect();
    assert_eq!(sides.len(), 2, "{sides:?}");
    for side in &sides {
        let result = query(&client, &base, side).await.unwrap_or_default();
        assert_eq!(result.len(), 1, "{side} returns data");
    }

    // The alert and recording rules loaded, and each evaluates without error.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rules: serde_json::Value = client
            .get(format!("{base}/api/v1/rules"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let all: Vec<serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert!(!all.is_empty(), "rules loaded: {rules}");
        assert!(
            all.iter().all(|r| r["health"] != "err"),
            "a rule fails: {rules}"
        );
        if all.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules never evaluated: {rules}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    drop(cleanup);
    let status = devnet(&devnet_dir, &["status"]);
    assert!(!status.status.success(), "devnet is down after `down`");
}
