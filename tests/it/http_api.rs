//! HTTP behaviour of a real node: readiness, auth, body limit, header-read timeout, metrics.

use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_flips_from_503_to_200_when_the_bootstrap_peer_appears() {
    // Bootstrap peer B does not run yet: we know its identity and reserve its port.
    let b_dir = tempfile::tempdir().unwrap();
    let b_id = zerostate::identity::generate(b_dir.path())
        .unwrap()
        .public()
        .to_peer_id();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b_addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();

    let a_dir = tempfile::tempdir().unwrap();
    let a = start(test_config(
        a_dir.path(),
        vec![b_addr.clone().with(libp2p::multiaddr::Protocol::P2p(b_id))],
    ))
    .await;
    let (status, body) = get(&a, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("bootstrap"),
        "{body}"
    );
    assert_eq!(get(&a, "/health").await.0, 200);

    let mut b_config = test_config(b_dir.path(), vec![]);
    b_config.listen = vec![b_addr];
    let b = start(b_config).await;
    assert_eq!(b.peer_id(), b_id);
    eventually(Duration::from_secs(30), "/ready returns 200", || async {
        (get(&a, "/ready").await.0 == 200).then_some(())
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn state_changing_calls_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let url = format!("http://{}/api/v1/blocklist", node.http_addr());
    let client = reqwest::Client::new();
    let body = serde_json::json!({ "peer_id": libp2p::PeerId::random().to_string() });

    let resp = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("api-token"),
        "the error says where the token is: {text}"
    );
    assert!(
        !text.contains(&dir.path().display().to_string()),
        "but does not reveal the data dir's path: {text}"
    );

    let resp = client
        .post(&url)
        .bearer_auth("wrong-token-wrong-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The token on disk is the one the node accepts.
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap();
    assert_eq!(token.trim(), node.api_token());
    let resp = client
        .post(&url)
        .bearer_auth(token.trim())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Malformed input gets a clear 4xx.
    let resp = client
        .post(&url)
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "peer_id": "not-a-peer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("not a peer id"));

    // Reading needs no token.
    assert_eq!(get(&node, "/api/v1/peers").await.0, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let url = format!("http://{}/api/v1/peers/dial", node.http_addr());
    let huge = format!("{{\"addr\":\"{}\"}}", "a".repeat(100 * 1024));
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(node.api_token())
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.expect("a JSON error body");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("exceeds the limit of 65536 bytes (api.max_body_bytes)"),
        "{error}"
    );
    node.shutdown().await;
}

/// Status and JSON body of a request (the body must be JSON, whatever the status).
async fn json_call(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, body)
}

#[tokio::test]
async fn every_error_body_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    config.content.max_object_bytes = 1024;
    let node = start(config).await;
    let base = format!("http://{}", node.http_addr());
    let http = reqwest::Client::new();

    // An upload above content.max_object_bytes, refused before the body is read.
    let (status, body) = json_call(
        http.put(format!("{base}/api/v1/content"))
            .bearer_auth(node.api_token())
            .body(vec![7u8; 1025]),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body["error"],
        "the request body of 1025 bytes exceeds the limit of 1024 bytes (content.max_object_bytes)"
    );
    // At the limit it is stored.
    let resp = http
        .put(format!("{base}/api/v1/content"))
        .bearer_auth(node.api_token())
        .body(vec![7u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // A path no route serves, and a method a route does not answer.
    let (status, body) = json_call(http.get(format!("{base}/api/v1/nothing"))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no such endpoint: /api/v1/nothing");
    let (status, body) = json_call(http.delete(format!("{base}/api/v1/wallet"))).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "/api/v1/wallet does not answer DELETE");
    // A close with a body that is not JSON.
    let (status, body) = json_call(
        http.post(format!("{base}/api/v1/channels/{}/close", "ab".repeat(32)))
            .bearer_auth(node.api_token())
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    node.shutdown().await;
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_endpoints_answer_one_page_shape() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Nobody bids: the task stays on its own, with no channel and no reputation record.
    let nodes = start_network(&dirs, |c| c.market.provider.kinds.clear()).await;
    let node = &nodes[0];
    let base = format!("http://{}", node.http_addr());
    let http = reqwest::Client::new();
    let (status, _) = json_call(
        http.post(format!("{base}/api/v1/tasks"))
            .bearer_auth(node.api_token())
            .json(&serde_json::json!({"kind": "pow", "difficulty": 4})),
    )
    .await;
    assert_eq!(status, 202);

    // One peer, one task, no channel, no reputation record yet.
    for (list, total) in [
        ("peers", 1),
        ("tasks", 1),
        ("channels", 0),
        ("reputation", 0),
    ] {
        let (status, page) = json_call(http.get(format!("{base}/api/v1/{list}?limit=1"))).await;
        assert_eq!(status, 200, "{list}: {page}");
        assert_eq!(keys(&page), ["items", "offset", "total"], "{list}: {page}");
        assert_eq!(page["total"], total, "{list}: {page}");
        assert_eq!(page["offset"], 0, "{list}: {page}");
        assert_eq!(page["items"].as_array().unwrap().len(), total, "{list}");

        // Past the end: the total, and no items.
        let (status, page) =
            json_call(http.get(format!("{base}/api/v1/{list}?offset=1&limit=1"))).await;
        assert_eq!(status, 200, "{list}: {page}");
        assert_eq!(
            (&page["total"], &page["offset"]),
            (&total.into(), &1.into())
        );
        assert_eq!(page["items"], serde_json::json!([]), "{list}");

        for bad in ["limit=0", "limit=501", "offset=minus"] {
            let (status, body) = json_call(http.get(format!("{base}/api/v1/{list}?{bad}"))).await;
            assert_eq!(status, 400, "{list}?{bad}: {body}");
            assert!(body["error"].is_string(), "{list}?{bad}: {body}");
        }
    }
    let (_, page) = json_call(http.get(format!("{base}/api/v1/peers"))).await;
    assert_eq!(page["items"][0]["peer_id"], nodes[1].peer_id().to_string());
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn half_a_request_is_disconnected_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    config.api.header_read_timeout_ms = 300;
    let node = start(config).await;
    let mut stream = tokio::net::TcpStream::connect(node.http_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // The server must close the connection; a generous bound keeps the test from hanging.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf))
        .await
        .expect("server closed the connection");
    assert!(read.is_ok() || buf.is_empty());
    let text = String::from_utf8_lossy(&buf);
    assert!(
        !text.contains("200 OK"),
        "half a request must not be answered: {text}"
    );

    // A complete request on a new connection still works.
    assert_eq!(get(&node, "/health").await.0, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_whatever_the_bind() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    // Bound to every interface, as in the container image: the check still applies.
    config.http = "0.0.0.0:0".parse().unwrap();
    config.api.allowed_hosts = vec!["node1".into()];
    let node = start(config).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.http_addr().port()));
    let ask = |host: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET /api/v1/peers HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    };
    // A page on evil.example whose name resolves to 127.0.0.1 (DNS rebinding).
    let refused = ask("evil.example:9464").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("not allowed"), "{refused}");
    for allowed in [
        "localhost:9464",
        "node1:9464",
        "10.0.0.7:9464",
        "[::1]:9464",
    ] {
        let answer = ask(allowed).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{allowed}: {answer}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_lock_out_a_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), vec![]);
    // Slow clients keep their connections for the whole test.
    config.api.header_read_timeout_ms = 120_000;
    let node = start(config).await;
    let port = node.http_addr().port();
    // 200 clients from 127.0.0.2 that send half a request and then nothing.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
            .await;
        slow.push(stream);
    }
    // A scrape from another address answers long before the slow clients' header timeout.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let text = client
        .get(format!("http://{}/metrics", node.http_addr()))
        .send()
        .await
        .expect("the scrape is answered while 200 slow clients hold connections")
        .text()
        .await
        .unwrap();
    let refused = metric_value(
        &text,
        r#"zerostate_http_connections_refused_total{reason="per_ip"}"#,
    );
    assert_eq!(
        refused,
        Some(168.0),
        "200 slow clients, 32 allowed from one address"
    );
    drop(slow);
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_are_openmetrics_with_one_eof() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let resp = reqwest::get(format!("http://{}/metrics", node.http_addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(text.matches("# EOF").count(), 1);
    assert_eq!(
        metric_value(
            &text,
            &format!(
                "zerostate_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );

    // A strict OpenMetrics parser (PyPI's prometheus_client) accepts the exposition.
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
names = {f.name for f in families}
for want in ("zerostate_build_info", "process_cpu_seconds", "zerostate_tokio_workers",
             "zerostate_libp2p_swarm_new_listen_addr", "zerostate_libp2p_ping_rtt_seconds"):
    assert want in names, (want, sorted(names))
print(len(families))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test.sh installs prometheus_client)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "strict OpenMetrics parse failed (is prometheus_client installed? scripts/test.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.shutdown().await;
}
