//! The task market end to end on real nodes: requesters post tasks, providers bid, winners
//! execute, requesters verify, and every node that saw an auction agrees on its outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zerostate::market::kinds::{BuiltIn, Computed, ExecError, Executor, Input};
use zerostate::market::wire::AuctionType;
use zerostate::market::{TaskParams, TaskRequest, TaskStatus, TaskView};
use zerostate::{Config, NodeHandle};

use crate::common::*;

/// Fast market settings for tests: short bid window, quick retries.
pub fn market_config(c: &mut Config, provider: bool) {
    c.market.bid_window_ms = 400;
    c.market.execution_timeout_ms = 20_000;
    c.market.max_retries = 4;
    c.market.provider.capacity = 8;
    if !provider {
        c.market.provider.kinds.clear();
    }
}

pub fn pow(difficulty: u32, auction_type: AuctionType) -> TaskRequest {
    TaskRequest {
        params: TaskParams::Pow {
            difficulty,
            input: None,
        },
        max_price: Some(1_000),
        auction_type: Some(auction_type),
        reputation_weighted: None,
    }
}

pub fn matmul(n: u32, auction_type: AuctionType) -> TaskRequest {
    TaskRequest {
        params: TaskParams::Matmul { n },
        max_price: Some(1_000),
        auction_type: Some(auction_type),
        reputation_weighted: None,
    }
}

/// Waits until the task has ended and returns it.
pub async fn finished(node: &NodeHandle, id: zerostate::market::wire::AuctionId) -> TaskView {
    eventually(Duration::from_secs(90), "the task ends", || async {
        let task = node.market().task(id).await.ok()??;
        task.status.is_final().then_some(task)
    })
    .await
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
pub fn sum_where(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && labels.iter().all(|want| series.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn sum_over(nodes: &[NodeHandle], name: &str, labels: &[&str]) -> f64 {
    let mut total = 0.0;
    for node in nodes {
        total += sum_where(&scrape(node).await, name, labels);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_run_twenty_auctions_and_agree_on_every_outcome() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    // Nodes 0 and 1 request; 2, 3 and 4 provide.
    let mut nodes = Vec::new();
    let mut config = test_config(dirs[0].path(), vec![]);
    market_config(&mut config, false);
    nodes.push(start(config).await);
    let bootstrap = p2p_addr(&nodes[0]);
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let mut config = test_config(dir.path(), vec![bootstrap.clone()]);
        market_config(&mut config, i >= 2);
        nodes.push(start(config).await);
    }
    for node in &nodes {
        eventually(Duration::from_secs(60), "full mesh", || async {
            (node.p2p().connected_peers().await.ok()?.len() >= 4).then_some(())
        })
        .await;
    }
    // Gossipsub needs a heartbeat to learn who subscribes to what.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut submitted = Vec::new();
    for i in 0..20 {
        let requester = &nodes[i % 2];
        let auction_type = if i % 4 < 2 {
            AuctionType::SecondPrice
        } else {
            AuctionType::FirstPrice
        };
        let request = if i % 3 == 0 {
            matmul(24, auction_type)
        } else {
            pow(8, auction_type)
        };
        let id = requester.market().submit(request).await.unwrap();
        submitted.push((i % 2, id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What each requester owes each provider: the prices of the tasks it won.
    let mut owed: std::collections::HashMap<(usize, String), u64> = Default::default();
    for (r, id) in &submitted {
        let task = finished(&nodes[*r], *id).await;
        assert_eq!(task.status, TaskStatus::Success, "task {id}: {task:#?}");
        assert_eq!(task.verification.as_deref(), Some("verified"));
        let winner = task.winner.clone().unwrap();
        let price = task.price.unwrap();
        *owed.entry((*r, winner.clone())).or_default() += price;
        assert!(price <= task.max_price);
        let last = task.attempts.last().unwrap();
        assert!(!last.bids.is_empty());
        assert!(
            last.bids
                .iter()
                .any(|b| b.bidder == winner && b.price <= price),
            "the winner bid at most its price: {task:#?}"
        );
        // Every node that saw the auction derives the same winner and price from its result.
        let auction = last.auction_id.parse().unwrap();
        let requester = nodes[*r].peer_id();
        for (i, node) in nodes.iter().enumerate() {
            let seen = eventually(
                Duration::from_secs(10),
                "the result reaches every node",
                || async { node.market().observed(requester, auction).await.ok()? },
            )
            .await;
            assert_eq!(seen.winner.to_string(), winner, "node {i}, task {id}");
            assert_eq!(seen.price, price, "node {i}, task {id}");
        }
    }

    // Every task was paid through a channel: the released escrows in each requester's
    // channels with a provider add up to the prices of the tasks that provider won, on both
    // sides of the channel, and no escrow is left locked.
    for ((r, provider), price) in &owed {
        let provider_node = nodes
            .iter()
            .find(|n| n.peer_id().to_string() == *provider)
            .unwrap();
        let paid = |node: &NodeHandle, peer: String| {
            let payments = node.payments().clone();
            async move {
                let page = payments.channels(0, 100).await.unwrap();
                let mine: Vec<_> = page
                    .channels
                    .into_iter()
                    .filter(|c| c.peer == peer)
                    .collect();
                let locked = mine.iter().any(|c| !c.locks.is_empty());
                (
                    mine.iter().map(|c| c.peer_balance).sum::<u64>(),
                    mine.iter().map(|c| c.balance).sum::<u64>(),
                    locked,
                )
            }
        };
        let requester = nodes[*r].peer_id().to_string();
        eventually(
            Duration::from_secs(20),
            "the escrows of verified tasks are released",
            || async {
                let (to_provider, _, locked) = paid(&nodes[*r], provider.clone()).await;
                let (_, provider_holds, _) = paid(provider_node, requester.clone()).await;
                (to_provider == *price && provider_holds == *price && !locked).then_some(())
            },
        )
        .await;
    }
    let released = sum_over(&nodes, "zerostate_economic_escrow_releases_total", &[]).await;
    assert_eq!(released, 20.0, "one release per verified task");

    let completed = sum_over(
        &nodes,
        "zerostate_economic_auctions_total",
        &[r#"status="completed""#],
    )
    .await;
    assert_eq!(completed, 20.0);
    let sent = sum_over(
        &nodes,
        "zerostate_economic_bids_total",
        &[r#"outcome="sent""#],
    )
    .await;
    let accepted = sum_over(
        &nodes,
        "zerostate_economic_bids_total",
        &[r#"outcome="accepted""#],
    )
    .await;
    let refused = sum_over(
        &nodes,
        "zerostate_economic_bids_total",
        &[r#"outcome="refused""#],
    )
    .await;
    assert!(sent >= 20.0, "{sent} bids sent");
    assert_eq!(
        sent,
        accepted + refused,
        "every bid sent was counted once by its requester"
    );
    let succeeded = sum_over(
        &nodes,
        "zerostate_economic_tasks_completed_total",
        &[r#"status="success""#],
    )
    .await;
    assert_eq!(succeeded, 20.0);
    // Providers recorded executions; requesters recorded reputation of the winners.
    assert!(
        sum_over(
            &nodes,
            "zerostate_economic_task_duration_seconds_count",
            &[]
        )
        .await
            >= 20.0
    );
    let text = scrape(&nodes[0]).await;
    assert!(sum_where(&text, "zerostate_economic_reputation_scores", &["peer_id="]) > 0.0);
    assert!(sum_where(&text, "zerostate_economic_task_cost_count", &[]) >= 10.0);

    for node in nodes {
        node.shutdown().await;
    }
}

/// Returns wrong results: a nonce that does not solve, a product that is off by one.
struct Liar;

impl Executor for Liar {
    fn execute(&self, input: &Input, deadline: Instant) -> Result<Computed, ExecError> {
        match BuiltIn.execute(input, deadline)? {
            Computed::Nonce(n) => {
                let Input::Pow { input, difficulty } = input else {
                    unreachable!()
                };
                // The first nonce after the solution that does not solve.
                let wrong = (n + 1..)
                    .find(|m| !zerostate::market::kinds::pow_verify(input, *difficulty, *m))
                    .unwrap();
                Ok(Computed::Nonce(wrong))
            }
            Computed::Product(m) => {
                let mut bytes = m.to_bytes();
                bytes[0] ^= 1;
                Ok(Computed::Product(
                    zerostate::market::kinds::Matrix::from_bytes(m.n(), &bytes).unwrap(),
                ))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_provider_is_caught_loses_reputation_and_stops_winning() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut config = test_config(dirs[0].path(), vec![]);
    market_config(&mut config, false);
    let requester = start(config).await;
    let bootstrap = p2p_addr(&requester);
    let mut config = test_config(dirs[1].path(), vec![bootstrap.clone()]);
    market_config(&mut config, true);
    config.market.provider.base_price = 50;
    let honest = start(config).await;
    // The liar undercuts everyone, so it wins until its reputation stops it.
    let mut config = test_config(dirs[2].path(), vec![bootstrap]);
    market_config(&mut config, true);
    config.market.provider.base_price = 1;
    config.market.provider.price_jitter_percent = 0;
    let liar = zerostate::node::start_with_executor(config, Arc::new(Liar))
        .await
        .unwrap();
    for node in [&requester, &honest, &liar] {
        eventually(Duration::from_secs(60), "connected", || async {
            (node.p2p().connected_peers().await.ok()?.len() >= 2).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut tasks = Vec::new();
    for i in 0..6 {
        let request = if i % 2 == 0 {
            pow(6, AuctionType::SecondPrice)
        } else {
            matmul(8, AuctionType::FirstPrice)
        };
        let id = requester.market().submit(request).await.unwrap();
        tasks.push(finished(&requester, id).await);
    }
    let liar_id = liar.peer_id().to_string();
    let honest_id = honest.peer_id().to_string();
    for task in &tasks {
        assert_eq!(task.status, TaskStatus::Success, "{task:#?}");
        assert_eq!(
            task.winner.as_deref(),
            Some(honest_id.as_str()),
            "{task:#?}"
        );
    }
    // Every wrong result was caught.
    let caught: usize = tasks
        .iter()
        .flat_map(|t| &t.attempts)
        .filter(|a| a.outcome.as_deref() == Some("wrong_result"))
        .count();
    assert!(caught >= 1, "the liar won at least once");
    let text = scrape(&requester).await;
    assert_eq!(
        sum_where(
            &text,
            "zerostate_economic_task_errors_total",
            &[r#"error="wrong_result""#]
        ),
        caught as f64
    );
    // Its reputation fell, and it stopped winning: a provider on probation that failed gets
    // a task only when nobody else bids, so the last tasks went to the honest provider at the
    // first attempt.
    let (_, body) = get(&requester, "/api/v1/reputation").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let peers = v["items"].as_array().unwrap();
    let liar_rep = peers.iter().find(|p| p["peer_id"] == liar_id).unwrap();
    assert!(liar_rep["score"].as_f64().unwrap() < 0.5, "{liar_rep}");
    assert!(liar_rep["failures"].as_u64().unwrap() >= 1, "{liar_rep}");
    assert_eq!(liar_rep["successes"], 0);
    let honest_rep = peers.iter().find(|p| p["peer_id"] == honest_id).unwrap();
    assert!(honest_rep["score"].as_f64().unwrap() > 0.5, "{honest_rep}");
    let last = tasks.last().unwrap();
    assert_eq!(last.attempts.len(), 1, "{last:#?}");

    // Reputation survives a restart.
    let dir = dirs[0].path().to_owned();
    requester.shutdown().await;
    let mut config = test_config(&dir, vec![]);
    market_config(&mut config, false);
    let again = start(config).await;
    let records = again.market().reputation().await.unwrap();
    let liar_again = records.iter().find(|p| p.peer_id == liar_id).unwrap();
    assert!(liar_again.score < 0.5 && liar_again.failures >= 1);
    for node in [again, honest, liar] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_api_needs_the_token_to_submit_and_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let base = format!("http://{}", node.http_addr());
    let http = reqwest::Client::new();
    let body = serde_json::json!({"kind": "pow", "difficulty": 8});
    let no_token = http
        .post(format!("{base}/api/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let submit = |body: serde_json::Value| {
        http.post(format!("{base}/api/v1/tasks"))
            .bearer_auth(node.api_token())
            .json(&body)
            .send()
    };
    for (bad, says) in [
        (serde_json::json!({"kind": "sort", "n": 3}), "unknown kind"),
        (
            serde_json::json!({"kind": "pow"}),
            "`difficulty` is required",
        ),
        (
            serde_json::json!({"kind": "pow", "difficulty": 40}),
            "`difficulty` must be 1..=32",
        ),
        (
            serde_json::json!({"kind": "matmul", "n": 513}),
            "`n` must be 1..=512",
        ),
        (
            serde_json::json!({"kind": "pow", "difficulty": 8, "max_price": 0}),
            "`max_price`",
        ),
        (
            serde_json::json!({"kind": "pow", "difficulty": 8, "colour": "red"}),
            "unknown field",
        ),
    ] {
        let resp = submit(bad.clone()).await.unwrap();
        // 400 for a value out of range, 422 for a body that does not fit the schema.
        assert!(matches!(resp.status().as_u16(), 400 | 422), "{bad}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{bad}: {text}");
    }
    // A good task is accepted; alone on the network it finds no bidder, and says so.
    let resp = submit(body).await.unwrap();
    assert_eq!(resp.status(), 202);
    let id: serde_json::Value = resp.json().await.unwrap();
    let id = id["id"].as_str().unwrap().to_owned();
    let (status, list) = get(&node, "/api/v1/tasks?limit=10").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert_eq!(get(&node, "/api/v1/tasks?limit=0").await.0, 400);
    assert_eq!(get(&node, "/api/v1/tasks/not-hex").await.0, 400);
    assert_eq!(
        get(&node, &format!("/api/v1/tasks/{}", "ab".repeat(16)))
            .await
            .0,
        404
    );
    let task = finished(&node, id.parse().unwrap()).await;
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(
        task.attempts
            .iter()
            .all(|a| a.outcome.as_deref() == Some("no_bids"))
    );
    assert_eq!(task.attempts.len() as u32, node_retries() + 1);
    node.shutdown().await;
}

fn node_retries() -> u32 {
    zerostate::Config::default().market.max_retries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reputation_from_an_older_versions_file_moves_into_the_ledger() {
    use zerostate::market::reputation::Reputation;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    let peer = libp2p::PeerId::random();
    let mut table = Reputation::new(Config::default().market.reputation);
    table.failure(peer, 100, zerostate::market::wire::now_ms());
    let file = dir.path().join("reputation.json");
    std::fs::write(&file, table.to_json()).unwrap();

    let node = start(test_config(dir.path(), vec![])).await;
    let has_record = |node: &NodeHandle| {
        let market = node.market().clone();
        async move {
            market
                .reputation()
                .await
                .unwrap()
                .iter()
                .any(|r| r.peer_id == peer.to_string() && r.failures == 1)
        }
    };
    assert!(has_record(&node).await, "the old file's records are read");
    eventually(
        Duration::from_secs(10),
        "the old file is removed once imported",
        || async { (!file.exists()).then_some(()) },
    )
    .await;
    node.shutdown().await;
    let node = start(test_config(dir.path(), vec![])).await;
    assert!(
        has_record(&node).await,
        "the records come back from the ledger"
    );
    node.shutdown().await;
}

/// The requester's own escrow failing (its wallet cannot fund the channel) is its fault: the
/// task fails `escrow_failed` with the numbers, and no provider loses reputation for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_cannot_fund_the_escrow_blames_no_provider() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut config = test_config(dirs[0].path(), vec![]);
    market_config(&mut config, false);
    config.market.max_retries = 1;
    // No credit at all: no escrow can be funded.
    config.payments.initial_credit = 0;
    let requester = start(config).await;
    let mut providers = Vec::new();
    for dir in &dirs[1..] {
        let mut config = test_config(dir.path(), vec![p2p_addr(&requester)]);
        market_config(&mut config, true);
        providers.push(start(config).await);
    }
    eventually(Duration::from_secs(60), "connected", || async {
        (requester.p2p().connected_peers().await.ok()?.len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let id = requester
        .market()
        .submit(pow(4, AuctionType::SecondPrice))
        .await
        .unwrap();
    let task = finished(&requester, id).await;
    assert_eq!(task.status, TaskStatus::Failed, "{task:#?}");
    // Each attempt's winner failed on our wallet, and was left out of the next auction.
    let winners: Vec<_> = task.attempts.iter().map(|a| a.winner.clone()).collect();
    assert_eq!(task.attempts.len(), 2, "{task:#?}");
    assert!(
        winners[0].is_some() && winners[0] != winners[1],
        "{task:#?}"
    );
    for attempt in &task.attempts {
        assert_eq!(
            attempt.outcome.as_deref(),
            Some("escrow_failed"),
            "{task:#?}"
        );
    }
    let error = task.error.clone().unwrap_or_default();
    assert!(error.starts_with("escrow_failed: "), "{error}");
    let records = requester.market().reputation().await.unwrap();
    for provider in &providers {
        let id = provider.peer_id().to_string();
        let failures: u64 = records
            .iter()
            .filter(|r| r.peer_id == id)
            .map(|r| r.failures)
            .sum();
        assert_eq!(failures, 0, "blamed for our own wallet: {records:#?}");
    }
    requester.shutdown().await;
    for provider in providers {
        provider.shutdown().await;
    }
}
