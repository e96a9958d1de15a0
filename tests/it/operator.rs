//! The operator package. Against real nodes: Prometheus service discovery across the network
//! (`GET /api/v1/sd`), hostile announcements played by raw swarms, and readiness as a metric.
//! Statically: the alert rules and their runbook, the Grafana dashboard and its provisioning,
//! and the compose stack (no container engine needed).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{Multiaddr, identify};
use yaml_rust2::{Yaml, YamlLoader};
use zerostate::p2p::PROTOCOL_VERSION;

use crate::common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The targets `GET /api/v1/sd` lists, in order, with each group's labels.
async fn sd(node: &zerostate::NodeHandle) -> Vec<(String, serde_json::Value)> {
    let (status, body) = get(node, "/api/v1/sd").await;
    assert_eq!(status, 200, "{body}");
    let groups: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    groups
        .into_iter()
        .map(|g| {
            let targets = g["targets"].as_array().unwrap();
            assert_eq!(targets.len(), 1, "one target per group: {g}");
            (targets[0].as_str().unwrap().to_owned(), g["labels"].clone())
        })
        .collect()
}

fn targets(list: &[(String, serde_json::Value)]) -> Vec<String> {
    list.iter().map(|(t, _)| t.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_lists_this_node_and_every_peer_that_announced_its_metrics() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let quiet = dirs[0].path().to_owned();
    let nodes = start_network(&dirs, |c| {
        // Node 0 announces nothing; the others announce their HTTP port (port 0).
        if c.data_dir != quiet {
            c.metrics.announce_url = "http://127.0.0.1:0/metrics".into();
        }
        // A gone peer is forgotten 10 s after it was last seen.
        c.monitor.suspect_after_ms = 5_000;
        c.monitor.dead_after_ms = 8_000;
        c.monitor.expire_after_ms = 10_000;
    })
    .await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.http_addr().to_string()).collect();
    let http = |i: usize| addrs[i].clone();

    // This node first, then the peers (in no particular order).
    let listed = |list: &[String], want: &[usize]| {
        list.first() == Some(&http(want[0]))
            && list.len() == want.len()
            && want.iter().all(|&i| list.contains(&http(i)))
    };
    let list = eventually(
        Duration::from_secs(30),
        "node 0 lists all three",
        || async {
            let list = sd(&nodes[0]).await;
            listed(&targets(&list), &[0, 1, 2]).then_some(list)
        },
    )
    .await;
    for (target, labels) in &list {
        let i = (0..3).find(|&i| http(i) == *target).unwrap();
        assert_eq!(
            labels["__meta_zerostate_peer_id"],
            nodes[i].peer_id().to_string(),
            "{labels}"
        );
        assert_eq!(labels["__metrics_path__"], "/metrics");
        assert_eq!(labels["__scheme__"], "http");
        let source = if i == 0 { "self" } else { "peer" };
        assert_eq!(labels["__meta_zerostate_source"], source);
    }
    // Node 0 announced nothing, so node 1 lists itself and node 2 only.
    eventually(Duration::from_secs(30), "node 1 lists 1 and 2", || async {
        listed(&targets(&sd(&nodes[1]).await), &[1, 2]).then_some(())
    })
    .await;
    let text = scrape(&nodes[0]).await;
    assert!(
        metric_value(
            &text,
            r#"zerostate_p2p_metrics_announcements_total{outcome="accepted"}"#
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );

    // A node that is gone leaves the list with the peer monitor's record of it.
    let mut nodes = nodes;
    let gone = nodes.pop().unwrap();
    let gone_target = gone.http_addr().to_string();
    gone.shutdown().await;
    eventually(
        Duration::from_secs(30),
        "node 2 expires from the list",
        || async {
            let list = targets(&sd(&nodes[0]).await);
            (!list.contains(&gone_target)).then_some(())
        },
    )
    .await;
    assert!(listed(&targets(&sd(&nodes[0]).await), &[0, 1]));
    for node in nodes {
        node.shutdown().await;
    }
}

/// A raw swarm whose identify announces `agent`, connected to `target` until dropped.
struct Announcer(tokio::task::JoinHandle<()>);

impl Drop for Announcer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn announcer(target: Multiaddr, agent: String) -> Announcer {
    let mut swarm = raw_swarm(|key| {
        identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), key.public()).with_agent_version(agent),
        )
    });
    swarm.dial(target).unwrap();
    Announcer(tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_endpoints_are_filtered_bounded_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    config.metrics.max_sd_targets = 3;
    let node = start(config).await;
    let addr = p2p_addr(&node);
    let agent = |url: &str| format!("zerostate/6.6.6 metrics={url}");
    // Eight peers, all connecting from 127.0.0.1 (the node admits at most 8 handshakes from
    // one address at once).
    let _peers: Vec<Announcer> = [
        agent("http://127.0.0.1:9001/metrics"),
        agent("http://127.0.0.1:9001/metrics"), // the same target again
        agent("http://127.0.0.1:9002/metrics"),
        agent("http://127.0.0.1:9003/metrics"), // beyond the cap
        agent("http://8.8.8.8:9464/metrics"),   // not the address it connects from
        agent("http://240.0.0.1:9464/metrics"), // reserved: filtered
        agent("http://127.0.0.1:9001/metrics?target=10.0.0.1"),
        agent(&format!("http://127.0.0.1:9001/{}", "a".repeat(3000))),
    ]
    .into_iter()
    .map(|a| announcer(addr.clone(), a))
    .collect();

    let count = |text: &str, outcome: &str| {
        metric_value(
            text,
            &format!(r#"zerostate_p2p_metrics_announcements_total{{outcome="{outcome}"}}"#),
        )
        .unwrap_or(0.0)
    };
    let outcomes = ["accepted", "foreign_host", "filtered", "malformed"];
    let text = eventually(Duration::from_secs(30), "eight announcements", || async {
        let text = scrape(&node).await;
        let all = outcomes.iter().map(|o| count(&text, o)).sum::<f64>();
        (all >= 8.0).then_some(text)
    })
    .await;
    for (outcome, want) in outcomes.iter().zip([4.0, 1.0, 1.0, 2.0]) {
        assert_eq!(count(&text, outcome), want, "{outcome}: {text}");
    }

    let list = targets(&sd(&node).await);
    assert_eq!(list.len(), 3, "the cap holds: {list:?}");
    assert_eq!(list[0], node.http_addr().to_string(), "this node first");
    let unique: HashSet<_> = list.iter().collect();
    assert_eq!(unique.len(), list.len(), "no target twice: {list:?}");
    for t in &list[1..] {
        assert!(
            ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"].contains(&t.as_str()),
            "only accepted endpoints: {list:?}"
        );
    }
    let (status, _) = get(&node, "/health").await;
    assert_eq!(status, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_only_listener_serves_metrics_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    config.metrics.announce_url = "http://127.0.0.1:0/metrics".into();
    config.validate().unwrap();
    let node = start(config).await;
    let metrics = node.metrics_addr().expect("the metrics listener runs");
    assert_ne!(metrics, node.http_addr());
    let resp = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("zerostate_build_info"));
    for path in ["/api/v1/wallet", "/api/v1/node", "/health"] {
        let resp = reqwest::get(format!("http://{metrics}{path}"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path} is not served there");
        let body: serde_json::Value = resp.json().await.expect("a JSON 404");
        assert_eq!(body["error"], format!("no such endpoint: {path}"));
    }
    // Port 0 in announce_url is the metrics listener's port.
    assert_eq!(targets(&sd(&node).await), [metrics.to_string()]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_gauge_follows_readiness() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_network(&dirs, |_| {}).await;
    let ready = |text: &str| metric_value(text, "zerostate_node_ready");
    for node in &nodes {
        eventually(Duration::from_secs(30), "connected: ready", || async {
            (ready(&scrape(node).await) == Some(1.0)).then_some(())
        })
        .await;
        assert_eq!(get(node, "/ready").await.0, 200);
    }
    // Node 1 bootstraps from node 0: without it, it is not ready, and the gauge says so.
    let first = nodes.remove(0);
    first.shutdown().await;
    let second = &nodes[0];
    eventually(Duration::from_secs(30), "node 1 not ready", || async {
        let text = scrape(second).await;
        (ready(&text) == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(get(second, "/ready").await.0, 503);
    nodes.pop().unwrap().shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Static checks of the files operators get.
// ---------------------------------------------------------------------------------------

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

fn promtool_check_config(path: &Path) {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install Debian's prometheus package or run scripts/test.sh")
        });
    assert!(
        out.status.success(),
        "promtool check config {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every alert: a severity, a summary, a description, and a runbook section with what it
/// means, how to confirm it and what to do; and it is listed in docs/METRICS.md.
#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section() {
    let rules = yaml("config/prometheus/rules.yml");
    let runbook = read("docs/RUNBOOK.md");
    let metrics_doc = read("docs/METRICS.md");
    let alerts_doc = metrics_doc
        .split("\n## Alerts")
        .nth(1)
        .expect("METRICS.md has Alerts");
    let mut alerts = Vec::new();
    for group in rules["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts.push(name.to_owned());
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{name}: severity {severity:?}"
            );
            for key in ["summary", "description"] {
                let text = rule["annotations"][key].as_str().unwrap_or_default();
                assert!(!text.trim().is_empty(), "{name}: no {key}");
            }
            let link = format!("docs/RUNBOOK.md#{}", name.to_lowercase());
            assert_eq!(
                rule["annotations"]["runbook"].as_str(),
                Some(link.as_str()),
                "{name}: runbook annotation"
            );
            let section = runbook
                .split(&format!("\n## {name}\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("RUNBOOK.md has no `## {name}` section"));
            let section = section.split("\n## ").next().unwrap();
            for sub in ["### What it means", "### How to confirm", "### What to do"] {
                assert!(section.contains(sub), "{name}: runbook lacks `{sub}`");
            }
            assert!(alerts_doc.contains(name), "METRICS.md Alerts lists {name}");
        }
    }
    for name in [
        "HighTaskFailureRate",
        "PaymentChannelLeaks",
        "SlowTaskExecution",
        "ZeroStateScrapeFailing",
        "ZeroStateNoPeers",
        "ZeroStateNodeNotReady",
        "ZeroStateContentVerificationFailures",
        "ZeroStateChannelDisputes",
        "ZeroStateEscrowRefundsHigh",
        "ZeroStateGossipRejections",
        "ZeroStateLabelSeriesAtCap",
    ] {
        assert!(alerts.iter().any(|a| a == name), "rules.yml has {name}");
    }
}

/// The dashboard: the rows the issue asks for, `job` and `node` variables used by every
/// query, one datasource that the provisioning defines, and a provider that loads it from
/// where the compose stack mounts it.
#[test]
fn the_dashboard_serves_any_node_and_is_provisioned() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("config/grafana/dashboards/zerostate.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for row in [
        "Network",
        "Market",
        "Payments",
        "Cache",
        "Process and runtime",
    ] {
        assert!(rows.contains(&row), "row {row}: {rows:?}");
    }
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"job") && vars.contains(&"node"), "{vars:?}");

    let datasource = yaml("config/grafana/provisioning/datasources/prometheus.yml");
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let queries = crate::e2e_prometheus::dashboard_queries();
    assert!(queries.len() >= 30, "{}", queries.len());
    for (title, expr) in &queries {
        assert!(
            expr.contains(r#"job=~"$job""#) && expr.contains(r#"instance=~"$node""#),
            "{title}: {expr}"
        );
    }
    let mut ids = HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id twice: {p}");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], uid, "{}", p["title"]);
        }
    }

    // The provider loads the directory the compose stack mounts the dashboards into.
    let provider = yaml("config/grafana/provisioning/dashboards/zerostate.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let compose = yaml("docker-compose.yml");
    let mounts = volumes(&compose["services"]["grafana"]);
    assert!(
        mounts
            .iter()
            .any(|(host, container)| host == "./config/grafana/dashboards" && container == path),
        "grafana mounts the dashboards at {path}: {mounts:?}"
    );
}

/// `(host, container)` of a service's short-syntax volumes.
fn volumes(service: &Yaml) -> Vec<(String, String)> {
    service["volumes"]
        .as_vec()
        .map(|v| {
            v.iter()
                .map(|m| {
                    let m = m.as_str().expect("short volume syntax");
                    let mut parts = m.split(':');
                    let host = parts.next().unwrap().to_owned();
                    let container = parts.next().unwrap_or_default().to_owned();
                    (host, container)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The compose stack, checked without a container engine: what it mounts and builds exists,
/// the Prometheus config it mounts passes `promtool check config`, and no host port is
/// published twice.
#[test]
fn the_compose_stack_mounts_what_exists_and_its_ports_do_not_collide() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_hash().unwrap();
    for name in ["node1", "node2", "node3", "prometheus", "grafana"] {
        assert!(
            services.contains_key(&Yaml::String(name.into())),
            "service {name}"
        );
    }
    let mut published = HashSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for (host, _) in volumes(service) {
            if host.starts_with("./") {
                assert!(
                    Path::new(REPO).join(&host).exists(),
                    "{name} mounts {host}, which does not exist"
                );
            } else {
                assert!(
                    !host.starts_with('/') && !host.starts_with(".."),
                    "{name} mounts {host}: use ./ paths inside the repository or named volumes"
                );
            }
        }
        if let Some(build) = service["build"].as_hash() {
            let context = build
                .get(&Yaml::String("context".into()))
                .and_then(Yaml::as_str)
                .unwrap();
            let file = build
                .get(&Yaml::String("dockerfile".into()))
                .and_then(Yaml::as_str)
                .unwrap_or("Dockerfile");
            assert!(
                Path::new(REPO).join(context).join(file).is_file(),
                "{name} builds {context}/{file}"
            );
        }
        for port in service["ports"].as_vec().into_iter().flatten() {
            let spec = port.as_str().expect("short port syntax");
            let (spec, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
            let parts: Vec<&str> = spec.split(':').collect();
            let (ip, host_port) = match parts.as_slice() {
                [ip, host, _container] => (*ip, *host),
                [host, _container] => ("0.0.0.0", *host),
                _ => panic!("{name}: port {spec} publishes no host port"),
            };
            let key = (ip.to_owned(), host_port.to_owned(), proto.to_owned());
            assert!(
                published.insert(key.clone()),
                "{name}: host port {key:?} is published twice"
            );
            // 0.0.0.0 would collide with every address of the same port.
            let wildcard = ("0.0.0.0".to_owned(), key.1.clone(), key.2.clone());
            assert!(
                ip == "0.0.0.0" || !published.contains(&wildcard),
                "{name}: {key:?} collides with a 0.0.0.0 binding"
            );
        }
    }
    assert!(published.len() >= 5, "{published:?}");

    // The Prometheus config the stack runs, read through its mount.
    let prometheus = &compose["services"]["prometheus"];
    let config = prometheus["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("prometheus is given --config.file");
    let host = volumes(prometheus)
        .into_iter()
        .find_map(|(host, container)| {
            let rest = config.strip_prefix(container.as_str())?;
            Some(
                Path::new(REPO)
                    .join(&host)
                    .join(rest.trim_start_matches('/')),
            )
        })
        .unwrap_or_else(|| panic!("{config} is not in a mounted directory"));
    promtool_check_config(&host);
}

/// The scrape config for a real network passes promtool too.
#[test]
fn the_real_network_scrape_config_is_valid() {
    promtool_check_config(&Path::new(REPO).join("config/prometheus/network.yml"));
}
