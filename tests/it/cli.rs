//! The `zerostate` binary: invalid configurations stop startup with a message that names the
//! problem; `keygen` and `id` agree; SIGTERM shuts a node down with exit code 0.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn zerostate(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zerostate"));
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("ZEROSTATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("binary runs");
    // A config that should be refused but is not would start a node that runs forever.
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    panic!(
        "zerostate {args:?} did not exit within 30 s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `zerostate node` with a config that must be refused; returns stderr.
fn refused(args: &[&str], env: &[(&str, &str)], file: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["node", "--data-dir", "data"];
    if !env.iter().any(|(k, _)| *k == "ZEROSTATE_HTTP") {
        all.extend(["--http", "127.0.0.1:0"]);
    }
    if let Some(text) = file {
        std::fs::write(dir.path().join("node.toml"), text).unwrap();
        all.extend(["--config", "node.toml"]);
    }
    all.extend(args);
    let out = zerostate(&all, env, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected refusal, got success: {stderr}"
    );
    stderr
}

#[test]
fn unknown_key_in_file_is_named() {
    let e = refused(&[], &[], Some("listen_port = 4001\n"));
    assert!(e.contains("listen_port") && e.contains("node.toml"), "{e}");
}

#[test]
fn unknown_key_in_section_is_named() {
    let e = refused(&[], &[], Some("[api]\nmax_conns = 4\n"));
    assert!(e.contains("max_conns"), "{e}");
}

#[test]
fn invalid_value_in_file_is_named() {
    let e = refused(&[], &[], Some("[api]\nmax_connections = \"lots\"\n"));
    assert!(e.contains("max_connections"), "{e}");
}

#[test]
fn invalid_env_value_names_key_and_variable() {
    let e = refused(
        &[],
        &[("ZEROSTATE_LIMITS_MAX_ESTABLISHED_TOTAL", "-3")],
        None,
    );
    assert!(
        e.contains("limits.max_established_total")
            && e.contains("ZEROSTATE_LIMITS_MAX_ESTABLISHED_TOTAL"),
        "{e}"
    );
}

#[test]
fn unknown_env_variable_is_named() {
    let e = refused(&[], &[("ZEROSTATE_BOOTSTRAPS", "x")], None);
    assert!(
        e.contains("ZEROSTATE_BOOTSTRAPS") && e.contains("did you mean ZEROSTATE_BOOTSTRAP?"),
        "{e}"
    );
}

#[test]
fn out_of_range_value_names_key_range_and_source() {
    let var = "ZEROSTATE_MARKET_BID_WINDOW_MS";
    let e = refused(&[], &[(var, "0")], None);
    assert!(
        e.contains(
            "`market.bid_window_ms` (from environment variable ZEROSTATE_MARKET_BID_WINDOW_MS)"
        ) && e.contains("use a value from 1 to 60000"),
        "{e}"
    );
    let e = refused(&[], &[], Some("[payments]\nchallenge_secs = 0\n"));
    assert!(
        e.contains("`payments.challenge_secs` (from config file node.toml)")
            && e.contains("use a value from 1 to 86400"),
        "{e}"
    );
}

#[test]
fn bootstrap_without_peer_id_is_refused() {
    let e = refused(&["--bootstrap", "/ip4/127.0.0.1/tcp/4001"], &[], None);
    assert!(e.contains("bootstrap") && e.contains("/p2p/"), "{e}");
}

#[test]
fn malformed_listen_address_is_refused() {
    let e = refused(&["--listen", "0.0.0.0:4001"], &[], None);
    assert!(e.contains("listen") && e.contains("not a multiaddr"), "{e}");
}

#[test]
fn invalid_http_address_is_refused() {
    let e = refused(&[], &[("ZEROSTATE_HTTP", "localhost")], None);
    assert!(e.contains("`http`"), "{e}");
}

#[test]
fn missing_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = zerostate(&["node", "--config", "nope.toml"], &[], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn keygen_then_id_print_the_same_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let out = zerostate(&["keygen", "--data-dir", "d"], &[], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = String::from_utf8(out.stdout).unwrap();
    let out = zerostate(&["id"], &[("ZEROSTATE_DATA_DIR", "d")], dir.path());
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), created);
    assert!(created.trim().starts_with("12D3Koo"));
    // A second keygen refuses to replace the identity.
    let out = zerostate(&["keygen", "--data-dir", "d"], &[], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn keygen_refuses_a_data_dir_a_node_is_using() {
    let dir = tempfile::tempdir().unwrap();
    // Another process holds the data dir's lock, as a running node does.
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let _held = zerostate::identity::lock_data_dir(&data).unwrap();
    let out = zerostate(&["keygen", "--data-dir", "d"], &[], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !data.join("identity.key").exists(),
        "no identity was written under the node"
    );
}

#[test]
fn id_without_key_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = zerostate(&["id", "--data-dir", "d"], &[], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("zerostate keygen"));
}

/// Starts a node with `env`, waits until it is up, stops it with SIGTERM and returns its
/// output.
fn run_then_terminate(env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zerostate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ZEROSTATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .envs(env.iter().copied())
        .args([
            "node",
            "--data-dir",
            "d",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is up (it writes node.json with a listen address).
    let info = dir.path().join("d/node.json");
    let mut up = false;
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&info)
            && text.contains("/tcp/")
        {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "node did not come up");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait_with_output().unwrap()
}

#[test]
fn sigterm_shuts_the_node_down_with_exit_code_0() {
    let out = run_then_terminate(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("node stopped"), "{stderr}");
}

#[test]
fn json_logs_one_object_per_line_and_rust_log_overrides_the_filter() {
    // `log.filter = "error"` would hide the INFO lines; RUST_LOG, when set, wins.
    let out = run_then_terminate(&[
        ("ZEROSTATE_LOG_FORMAT", "json"),
        ("ZEROSTATE_LOG_FILTER", "error"),
        ("RUST_LOG", "info"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "node started")
        .unwrap_or_else(|| panic!("no `node started` line: {stderr}"));
    assert_eq!(started["level"], "INFO", "{started}");
    assert!(started["fields"]["peer_id"].is_string(), "{started}");

    // Without RUST_LOG, the configured filter applies.
    let out = run_then_terminate(&[("ZEROSTATE_LOG_FILTER", "error")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("node started"), "{stderr}");
}

#[test]
fn a_bad_log_setting_is_refused_with_its_source() {
    let e = refused(&[], &[("RUST_LOG", "zerostate=loud")], None);
    assert!(
        e.contains("RUST_LOG") && e.contains("zerostate=loud"),
        "{e}"
    );
    let e = refused(&[], &[], Some("[log]\nformat = \"xml\"\n"));
    assert!(e.contains("format") && e.contains("xml"), "{e}");
}

#[test]
fn devnet_commands_refuse_to_run_while_another_holds_the_devnet() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("node-1");
    std::fs::create_dir_all(&marker).unwrap();
    std::fs::write(marker.join("keep"), b"a running devnet's node folder").unwrap();
    // Another devnet.sh command holds the lock (played by flock(1) holding it for a while).
    let lock = dir.path().join("devnet.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) is installed (util-linux)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Command::new("flock")
        .args(["-n"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/devnet.sh");
    for command in [vec!["up", "1"], vec!["down"]] {
        let out = Command::new("bash")
            .arg(script)
            .args(&command)
            .env("DEVNET_DIR", dir.path())
            .env("ZEROSTATE_BIN", env!("CARGO_BIN_EXE_zerostate"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{command:?} ran beside another command"
        );
        assert!(
            stderr.contains("another devnet.sh command is running"),
            "{stderr}"
        );
    }
    assert!(
        marker.join("keep").exists(),
        "the other command's files are untouched"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// A node running in this process (on the returned runtime's threads) while the test runs
/// the binary against it; nobody bids on its tasks.
fn node_in_process(dir: &std::path::Path) -> (tokio::runtime::Runtime, zerostate::NodeHandle) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = crate::common::test_config(dir, vec![]);
    config.market.provider.kinds.clear();
    let node = runtime.block_on(crate::common::start(config));
    (runtime, node)
}

#[test]
fn api_takes_host_and_port_without_a_scheme_and_explains_a_bad_address() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, node) = node_in_process(&dir.path().join("node"));
    let addr = node.http_addr().to_string();

    let out = zerostate(&["wallet", "--api", &addr], &[], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let wallet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(wallet["available"].is_u64(), "{wallet}");

    for (bad, why) in [
        (
            format!("ftp://{addr}"),
            "the scheme is `ftp`, not http or https",
        ),
        (format!("{addr}/api/v1"), "has no path"),
        ("127.0.0.1:port".to_owned(), "invalid port"),
    ] {
        let out = zerostate(&["wallet", "--api", &bad], &[], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {stderr}");
        assert!(stderr.contains("invalid --api"), "{bad}: {stderr}");
        assert!(stderr.contains(&format!("`{bad}`")), "{bad}: {stderr}");
        assert!(stderr.contains(why), "{bad}: {stderr}");
        assert!(
            stderr.contains("write host:port or a URL, e.g. 127.0.0.1:9464"),
            "{bad}: {stderr}"
        );
    }
    runtime.block_on(node.shutdown());
}

#[test]
fn task_list_shows_20_by_default_and_says_how_many_more_exist() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, node) = node_in_process(&dir.path().join("node"));
    let addr = node.http_addr().to_string();
    // 21 tasks: one through the CLI, the rest through the API.
    let out = zerostate(
        &[
            "task",
            "submit",
            "--api",
            &addr,
            "--token",
            node.api_token(),
            "--kind",
            "pow",
            "--difficulty",
            "4",
        ],
        &[],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    runtime.block_on(async {
        let http = reqwest::Client::new();
        for _ in 0..20 {
            let resp = http
                .post(format!("http://{addr}/api/v1/tasks"))
                .bearer_auth(node.api_token())
                .json(&serde_json::json!({"kind": "pow", "difficulty": 4}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
        }
    });
    let list = |extra: &[&str]| {
        let mut args = vec!["task", "list", "--api", &addr];
        args.extend(extra);
        let out = zerostate(&args, &[], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (page, stderr)
    };

    let (page, stderr) = list(&[]);
    assert_eq!(page["total"], 21, "{page}");
    assert_eq!(page["offset"], 0);
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert!(
        stderr.contains("20 of 21 tasks shown; 1 more: add --offset 20"),
        "{stderr}"
    );

    let (page, stderr) = list(&["--offset", "20"]);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["offset"], 20);
    assert!(!stderr.contains("more"), "the last page: {stderr}");

    let (page, stderr) = list(&["--limit", "5", "--offset", "3"]);
    assert_eq!(page["items"].as_array().unwrap().len(), 5, "{page}");
    assert!(
        stderr.contains("5 of 21 tasks shown; 13 more: add --offset 8"),
        "{stderr}"
    );
    runtime.block_on(node.shutdown());
}

/// Runs the binary against `addr` with `args`; returns stdout, or panics with stderr.
fn cli_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = zerostate(args, &[], dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "zerostate {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn task_show_and_result_give_the_parameters_and_the_verified_answer() {
    use zerostate::market::kinds::{Matrix, pow_verify};
    use zerostate::market::wire::AuctionId;

    let dir = tempfile::tempdir().unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nodes = runtime.block_on(crate::common::start_network(&dirs, |c| {
        crate::market::market_config(c, true)
    }));
    let requester = &nodes[0];
    let addr = requester.http_addr().to_string();
    let token = requester.api_token().to_owned();
    let api = ["--api", addr.as_str(), "--token", token.as_str()];
    let submit = |task: &[&str]| {
        let mut args = vec!["task", "submit"];
        args.extend(api);
        args.extend(task);
        let id = cli_ok(dir.path(), &args).trim().to_owned();
        let parsed: AuctionId = id.parse().unwrap();
        runtime.block_on(crate::market::finished(requester, parsed));
        id
    };

    // pow: the nonce, and the parameters it answers.
    let id = submit(&["--kind", "pow", "--difficulty", "8", "--input", "hello"]);
    let mut args = vec!["task", "result", id.as_str()];
    args.extend(api);
    let nonce: u64 = cli_ok(dir.path(), &args).trim().parse().unwrap();
    assert!(pow_verify(b"hello", 8, nonce));
    let mut args = vec!["task", "show", id.as_str()];
    args.extend(api);
    let shown: serde_json::Value = serde_json::from_str(&cli_ok(dir.path(), &args)).unwrap();
    assert_eq!(shown["status"], "success", "{shown}");
    assert_eq!(shown["parameters"]["kind"], "pow", "{shown}");
    assert_eq!(shown["parameters"]["difficulty"], 8, "{shown}");
    assert_eq!(shown["parameters"]["input"], "hello", "{shown}");
    assert_eq!(shown["result"]["nonce"], nonce, "{shown}");

    // matmul: the product, fetched through the node, is A·B.
    let id = submit(&["--kind", "matmul", "--n", "8"]);
    let out = dir.path().join("product.bin");
    let mut args = vec![
        "task",
        "result",
        id.as_str(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(api);
    cli_ok(dir.path(), &args);
    let product = Matrix::from_bytes(8, &std::fs::read(&out).unwrap()).unwrap();
    let mut args = vec!["task", "show", id.as_str()];
    args.extend(api);
    let shown: serde_json::Value = serde_json::from_str(&cli_ok(dir.path(), &args)).unwrap();
    let client = zerostate::client::Client::new(&format!("http://{addr}"), Some(token.clone()));
    let (a, b) = runtime.block_on(async {
        let get = |key: &str| {
            let id = shown["parameters"][key].as_str().unwrap().to_owned();
            let client = client.clone();
            async move { client.content(&id).await.unwrap() }
        };
        (get("a").await, get("b").await)
    });
    let (a, b) = (
        Matrix::from_bytes(8, &a).unwrap(),
        Matrix::from_bytes(8, &b).unwrap(),
    );
    let far = std::time::Instant::now() + Duration::from_secs(60);
    assert_eq!(product, a.multiply(&b, far).unwrap());
    let saved = zerostate::content_id::ContentId::of(&std::fs::read(&out).unwrap());
    assert_eq!(shown["result"]["product"], saved.to_string(), "{shown}");

    // Below every provider's price: the task fails, and says why with the numbers.
    let id = submit(&["--kind", "pow", "--difficulty", "4", "--max-price", "5"]);
    let mut args = vec!["task", "result", id.as_str()];
    args.extend(api);
    let out = zerostate(&args, &[], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for says in ["no verified result", "no_bids", "max_price 5", "base_price"] {
        assert!(stderr.contains(says), "missing `{says}`: {stderr}");
    }
    runtime.block_on(async {
        for node in nodes {
            node.shutdown().await;
        }
    });
}

/// Runs the CLI against a running node without blocking the runtime the node runs on.
async fn cli(args: Vec<String>, dir: std::path::PathBuf) -> (i32, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        zerostate(&args, &[], &dir)
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_pay_to_a_silent_peer_prints_the_pending_state_and_exits_3() {
    use crate::common::*;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = test_config(a_dir.path(), vec![]);
    config.payments.ack_timeout_ms = 1_000;
    let a = start(config).await;
    let b = start(test_config(b_dir.path(), vec![p2p_addr(&a)])).await;
    let b_id = b.peer_id();
    eventually(Duration::from_secs(30), "A and B connected", || async {
        (a.p2p().connected_peers().await.ok()?.contains(&b_id)).then_some(())
    })
    .await;
    let channel = a.payments().open(b_id, 1000, 0).await.unwrap().id;
    b.shutdown().await;
    let cwd = a_dir.path().to_owned();
    let pay = |amount: &str, id: Option<&str>| {
        let mut args: Vec<String> = ["channel", "pay", "--data-dir", ".", &channel, amount]
            .map(String::from)
            .to_vec();
        if let Some(id) = id {
            args.extend(["--payment-id".into(), id.into()]);
        }
        cli(args, cwd.clone())
    };

    let (code, stdout, stderr) = pay("10", None).await;
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let view: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view["status"], "pending", "{view}");
    assert_eq!(
        (view["number"].as_u64(), view["amount"].as_u64()),
        (Some(1), Some(10))
    );
    assert_eq!(view["channel_id"], channel.as_str());
    let id = view["payment_id"].as_str().unwrap().to_owned();
    for expected in [
        format!("payment id: {id}"),
        "PENDING (exit code 3)".into(),
        "state 1".into(),
        channel.clone(),
        format!("--payment-id {id}"),
        "never pays twice".into(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} in {stderr}");
    }

    // The retry with the printed id: the same pending payment, nothing paid again.
    let (code, stdout, stderr) = pay("10", Some(&id)).await;
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (again["number"].as_u64(), again["replayed"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        again["channel"]["balance"], 1000,
        "nothing binding moved yet"
    );

    // The id for another amount is refused; so is a malformed id.
    let (code, _, stderr) = pay("11", Some(&id)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("422") && stderr.contains("already used"),
        "{stderr}"
    );
    let (code, _, stderr) = pay("11", Some("not valid")).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--payment-id"), "{stderr}");

    // Over the balance: the cause and the numbers (10 is already in flight).
    let (code, _, stderr) = pay("5000", None).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("insufficient_funds")
            && stderr.contains("5000 requested")
            && stderr.contains("only 990 is available in the channel"),
        "{stderr}"
    );

    // The help documents the exit codes and the payment id.
    let (code, help, _) = cli(
        ["channel", "pay", "--help"].map(String::from).to_vec(),
        cwd.clone(),
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        help.contains("--payment-id") && help.contains("3 pending"),
        "{help}"
    );
    a.shutdown().await;
}
