//! End to end: five node processes started by `scripts/devnet.sh` from the built binary,
//! loaded with tasks by `devnet.sh load`, scraped by a real Prometheus server through the
//! devnet's generated config (with the alert rules, their `for` windows shortened), and by a
//! second one that finds the nodes only through node 1's `/api/v1/sd`. Every query of
//! docs/METRICS.md and of the Grafana dashboard returns data; no alert fires on the healthy
//! devnet; once four nodes are killed, the scrape, no-peers and not-ready alerts fire.
//!
//! Needs `prometheus` on PATH (or `PROMETHEUS_BIN`); `scripts/test.sh` installs Debian's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use yaml_rust2::YamlLoader;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The `for` window of every alert in the end-to-end test.
const SHORT_FOR: &str = "5s";

/// Stops the Prometheus servers and the devnet even when an assertion fails.
struct Cleanup {
    devnet_dir: PathBuf,
    prometheus: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &mut self.prometheus {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = devnet(&self.devnet_dir, &["down"]);
    }
}

/// The rules file the devnet's Prometheus configs load: `config/prometheus/rules.yml` with
/// every `for` window set to [`SHORT_FOR`], next to the devnet directory.
fn rules_file(devnet_dir: &Path) -> PathBuf {
    devnet_dir.with_file_name("rules.yml")
}

fn write_short_rules(devnet_dir: &Path) {
    let rules = std::fs::read_to_string(format!("{REPO}/config/prometheus/rules.yml")).unwrap();
    let mut shortened = 0;
    let lines: Vec<String> = rules
        .lines()
        .map(|l| {
            let rest = l.trim_start();
            if rest.starts_with("for: ") {
                shortened += 1;
                format!("{}for: {SHORT_FOR}", &l[..l.len() - rest.len()])
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(shortened >= 11, "every alert has a `for` window");
    std::fs::write(rules_file(devnet_dir), lines.join("\n") + "\n").unwrap();
}

fn devnet(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(format!("{REPO}/scripts/devnet.sh"))
        .args(args)
        .env("DEVNET_DIR", dir)
        .env("DEVNET_RULES_FILE", rules_file(dir))
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

/// Starts a Prometheus server with `config`, storing in `data` (its log in `data`.log);
/// returns it and its base URL.
fn start_prometheus(config: &Path, data: &Path) -> (Child, String) {
    let port = free_port();
    let log = std::fs::File::create(data.with_extension("log")).unwrap();
    let child = Command::new(prometheus_bin())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); install Debian's prometheus package or run scripts/test.sh",
                prometheus_bin()
            )
        });
    (child, format!("http://127.0.0.1:{port}"))
}

/// GETs `url` and parses the JSON answer.
async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The alerts of a Prometheus server as (name, instance, state).
async fn alerts(client: &reqwest::Client, base: &str) -> Vec<(String, String, String)> {
    let body = get_json(client, &format!("{base}/api/v1/alerts")).await;
    body["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&a["labels"]["alertname"]),
                s(&a["labels"]["instance"]),
                s(&a["state"]),
            )
        })
        .collect()
}

/// Every query of the Grafana dashboard as (panel title, expression), rows' nested panels
/// included.
pub(crate) fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{REPO}/config/grafana/dashboards/zerostate.json"))
        .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    fn walk(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.to_owned(), expr.to_owned()));
                }
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    out
}

/// A dashboard query with its variables as Grafana substitutes them for "All".
fn substituted(expr: &str) -> String {
    expr.replace("$job", ".*")
        .replace("$node", ".*")
        .replace("$__rate_interval", "1m")
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

/// The ```promql alert blocks of docs/METRICS.md: alert expressions, empty on a healthy
/// network but valid.
fn doc_alert_expressions() -> Vec<String> {
    let doc = std::fs::read_to_string(format!("{REPO}/docs/METRICS.md")).unwrap();
    doc.split("```promql alert\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().trim().to_owned())
        .collect()
}

/// Every query of docs/METRICS.md: the first column of the "Operator queries" table, and
/// each ```promql block (one query each). Alert expressions are in ```promql alert blocks,
/// the old, invalid queries in ```text blocks.
fn doc_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(format!("{REPO}/docs/METRICS.md")).unwrap();
    let section = doc
        .split("## Operator queries")
        .nth(1)
        .expect("docs/METRICS.md has an Operator queries section");
    let section = section.split("\n## ").next().unwrap();
    let mut queries: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split("` |").next())
        .map(|q| q.replace("\\|", "|"))
        .collect();
    for block in doc.split("```promql\n").skip(1) {
        queries.push(block.split("```").next().unwrap().trim().to_owned());
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_five_node_devnet_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let devnet_dir = dir.path().join("devnet");
    let mut cleanup = Cleanup {
        devnet_dir: devnet_dir.clone(),
        prometheus: Vec::new(),
    };
    write_short_rules(&devnet_dir);

    let up = devnet(&devnet_dir, &["up", "5"]);
    assert!(
        up.status.success(),
        "devnet up failed:\n{}\n{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    for file in [
        "nodes.json",
        "targets.json",
        "prometheus.yml",
        "prometheus-http-sd.yml",
    ] {
        assert!(devnet_dir.join(file).exists(), "{file} written");
    }
    let nodes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(devnet_dir.join("nodes.json")).unwrap()).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 5);

    let (prometheus, base) = start_prometheus(
        &devnet_dir.join("prometheus.yml"),
        &dir.path().join("prometheus-data"),
    );
    cleanup.prometheus.push(prometheus);
    // The alternative: one http_sd job asking node 1 for every node's metrics endpoint.
    let (sd_prometheus, sd_base) = start_prometheus(
        &devnet_dir.join("prometheus-http-sd.yml"),
        &dir.path().join("prometheus-sd-data"),
    );
    cleanup.prometheus.push(sd_prometheus);
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
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(
        up_ok,
        "up == 1 for all five targets; Prometheus said:\n{}",
        log("prometheus-data.log")
    );
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

    // HTTP SD: the Prometheus whose only target source is node 1's /api/v1/sd finds and
    // scrapes all five nodes, each once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let result = query(&client, &sd_base, r#"up{job="zerostate"}"#).await;
        let instances: std::collections::HashSet<String> = result
            .iter()
            .flatten()
            .filter(|r| r["value"][1] == "1")
            .map(|r| r["metric"]["instance"].as_str().unwrap().to_owned())
            .collect();
        let want: std::collections::HashSet<String> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["http"].as_str().unwrap().to_owned())
            .collect();
        if instances == want && result.as_ref().is_some_and(|r| r.len() == 5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "http_sd discovers and scrapes all 5: {result:?}; Prometheus said:\n{}",
            log("prometheus-sd-data.log")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let peers = query(&client, &sd_base, "count(zerostate_build_info)").await;
    assert_eq!(
        peers.as_deref().map(|r| r[0]["value"][1].clone()),
        Some("5".into())
    );
    if let Some(mut p) = cleanup.prometheus.pop() {
        let _ = p.kill();
        let _ = p.wait();
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
        let idle = page["items"]
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
            let tasks = client.tasks(0, 500).await.unwrap().items;
            verified.extend(
                tasks
                    .into_iter()
                    .filter(|t| t.status == zerostate::market::TaskStatus::Success)
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
            let channels = client.channels(0, 500).await.unwrap().items;
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

    // Every query of docs/METRICS.md, and every query of the dashboard (its variables as
    // for "All"), returns data.
    let mut queries = doc_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let panels = dashboard_queries();
    assert!(panels.len() >= 30, "{panels:?}");
    queries.extend(panels.iter().map(|(_, expr)| substituted(expr)));
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

    // The alert expressions of docs/METRICS.md are valid PromQL (`query` fails on an error).
    let expressions = doc_alert_expressions();
    assert!(expressions.len() >= 2, "{expressions:?}");
    for e in &expressions {
        assert!(query(&client, &base, e).await.is_some(), "{e}");
    }

    // The expression of PaymentChannelLeaks (without its threshold) has a value for each
    // node that opened channels (both sides have series: channels were opened for the tasks,
    // settlements are exposed from the start): it cannot silently match nothing, as the old
    // rule did.
    let rules = YamlLoader::load_from_str(
        &std::fs::read_to_string(format!("{REPO}/config/prometheus/rules.yml")).unwrap(),
    )
    .unwrap();
    let leak = rules[0]["groups"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_vec().unwrap())
        .find(|r| r["alert"].as_str() == Some("PaymentChannelLeaks"))
        .and_then(|r| r["expr"].as_str())
        .and_then(|e| e.trim().rsplit_once("> 10"))
        .map(|(expr, _)| expr.trim().to_owned())
        .expect("rules.yml has PaymentChannelLeaks, ending in `> 10`");
    let value = query(&client, &base, &leak).await.unwrap_or_default();
    assert!(!value.is_empty(), "{leak} -> {value:?}");

    // The alert and recording rules loaded, and each evaluates without error.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rules = get_json(&client, &format!("{base}/api/v1/rules")).await;
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

    // No alert fires on the healthy devnet, nor is one about to: with every `for` window
    // at 5 s, an expression true for longer would already fire. Checked over 10 evaluations.
    for _ in 0..10 {
        let active = alerts(&client, &base).await;
        assert!(active.is_empty(), "alerts on a healthy devnet: {active:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Kill every node but node 2, which bootstraps from node 1: the four are not scraped any
    // more, and node 2 has no peer and is not ready.
    for n in ["1", "3", "4", "5"] {
        let out = devnet(&devnet_dir, &["kill", n]);
        assert!(
            out.status.success(),
            "kill {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let http = |i: usize| nodes[i - 1]["http"].as_str().unwrap().to_owned();
    let mut want: Vec<(String, String)> = [1, 3, 4, 5]
        .iter()
        .map(|&i| ("ZeroStateScrapeFailing".to_owned(), http(i)))
        .collect();
    want.push(("ZeroStateNoPeers".into(), http(2)));
    want.push(("ZeroStateNodeNotReady".into(), http(2)));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let firing: Vec<(String, String)> = alerts(&client, &base)
            .await
            .into_iter()
            .filter(|(_, _, state)| state == "firing")
            .map(|(name, instance, _)| (name, instance))
            .collect();
        if want.iter().all(|w| firing.contains(w)) {
            // Nothing else: the survivor's other alerts stay quiet.
            let other: Vec<_> = firing.iter().filter(|f| !want.contains(f)).collect();
            assert!(other.is_empty(), "unexpected alerts: {other:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "want {want:?} firing, have {firing:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    drop(cleanup);
    let status = devnet(&devnet_dir, &["status"]);
    assert!(!status.status.success(), "devnet is down after `down`");
}
