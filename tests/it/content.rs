//! Content exchange between real nodes: put on one, fetch verified through another (with the
//! token; without it, only the cache answers), share concurrent fetches, and refuse bad input
//! with clear 4xx errors. Lying and silent providers are in `hostile.rs`.

use std::time::Duration;

use crate::common::*;
use rand::RngCore;
use zerostate::NodeHandle;

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

pub async fn put(node: &NodeHandle, data: &[u8]) -> String {
    let resp = reqwest::Client::new()
        .put(format!("http://{}/api/v1/content", node.http_addr()))
        .bearer_auth(node.api_token())
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// GET with the token: from the cache, or fetched from the network.
pub async fn fetch(node: &NodeHandle, id: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/v1/content/{id}", node.http_addr()))
        .bearer_auth(node.api_token())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

/// GET without the token: the cache only.
async fn fetch_cached(node: &NodeHandle, id: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::get(format!("http://{}/api/v1/content/{id}", node.http_addr()))
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

async fn head(node: &NodeHandle, id: &str) -> u16 {
    reqwest::Client::new()
        .head(format!("http://{}/api/v1/content/{id}", node.http_addr()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_fetched_verified_and_only_with_the_token() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| c.content.max_object_bytes = 512 * 1024).await;
    let (a, c) = (&nodes[0], &nodes[2]);

    // Put on A, fetch through C: the bytes arrive and are verified.
    let data = random_bytes(200 * 1024);
    let id = put(a, &data).await;
    // A's provider record is found through Kademlia (not only because A is connected).
    let content_id: zerostate::content_id::ContentId = id.parse().unwrap();
    eventually(
        Duration::from_secs(20),
        "C finds A as a provider",
        || async {
            let providers = c.p2p().find_providers(content_id).await.ok()?;
            providers.contains(&a.peer_id()).then_some(())
        },
    )
    .await;
    assert_eq!(head(a, &id).await, 200);
    assert_eq!(head(c, &id).await, 404, "C does not have it yet");
    let (status, got) = fetch(c, &id).await;
    assert_eq!(status, 200);
    assert_eq!(got, data);
    assert_eq!(head(c, &id).await, 200, "C cached what it fetched");
    let c_metrics = scrape(c).await;
    assert_eq!(
        value(&c_metrics, "zerostate_p2p_content_fetched_bytes_total"),
        data.len() as f64
    );
    assert_eq!(
        value(
            &c_metrics,
            r#"zerostate_p2p_content_fetches_total{outcome="fetched"}"#
        ),
        1.0
    );
    assert!(
        value(
            &c_metrics,
            "zerostate_p2p_content_verification_latency_seconds_count"
        ) >= 1.0
    );
    assert_eq!(value(&c_metrics, "zerostate_cache_entries"), 1.0);
    assert_eq!(
        value(&c_metrics, "zerostate_cache_memory_bytes"),
        data.len() as f64
    );
    let a_metrics = scrape(a).await;
    assert_eq!(
        value(&a_metrics, "zerostate_p2p_content_served_bytes_total"),
        data.len() as f64
    );
    // A second read is a cache hit on C; nothing more is served by A.
    assert_eq!(fetch(c, &id).await.1, data);
    let c_metrics = scrape(c).await;
    assert!(value(&c_metrics, "zerostate_cache_hits_total") >= 1.0);
    assert_eq!(
        value(&scrape(a).await, "zerostate_p2p_content_served_bytes_total"),
        data.len() as f64
    );

    // Without the token, a node answers only from its cache: a web page cannot make it
    // fetch, insert, evict or announce anything.
    let x = random_bytes(64 * 1024);
    let x_id = put(a, &x).await;
    let fetches_before = value(
        &scrape(c).await,
        r#"zerostate_p2p_content_fetches_total{outcome="fetched"}"#,
    );
    let (status, body) = fetch_cached(c, &x_id).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("needs the API token"));
    assert_eq!(head(c, &x_id).await, 404, "nothing was fetched");
    assert_eq!(
        value(
            &scrape(c).await,
            r#"zerostate_p2p_content_fetches_total{outcome="fetched"}"#
        ),
        fetches_before
    );
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/v1/content/{x_id}", c.http_addr()))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a wrong token is refused, not ignored");
    assert_eq!(fetch(c, &x_id).await, (200, x.clone()));
    assert_eq!(fetch_cached(c, &x_id).await, (200, x), "now cached");

    // Concurrent requests for one id share one fetch: A serves the object once.
    let y = random_bytes(128 * 1024);
    let y_id = put(a, &y).await;
    let served_before = value(&scrape(a).await, "zerostate_p2p_content_served_bytes_total");
    let fetches: Vec<_> = (0..8).map(|_| fetch(c, &y_id)).collect();
    for (status, got) in futures::future::join_all(fetches).await {
        assert_eq!(status, 200);
        assert_eq!(got, y);
    }
    let served_after = value(&scrape(a).await, "zerostate_p2p_content_served_bytes_total");
    assert_eq!(
        served_after - served_before,
        y.len() as f64,
        "one fetch for 8 requests"
    );

    for node in nodes {
        node.shutdown().await;
    }
}

/// Sends the headers of a PUT of `len` bytes (no body) and returns the response text.
async fn raw_put_headers(node: &NodeHandle, len: usize, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(node.http_addr())
        .await
        .unwrap();
    let request = format!(
        "PUT /api/v1/content HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\n{extra}\r\n",
        node.api_token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the response's body has arrived or the server closes.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the server answers without waiting for the body")
            .unwrap();
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if n == 0 || text.contains("\r\n\r\n{") && text.ends_with('}') {
            return text.into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_requests_get_clear_4xx_errors() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |c| c.content.max_object_bytes = 64 * 1024).await;
    let node = &nodes[1];

    let check = |status: u16, body: Vec<u8>, want: u16, text: &str| {
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, want, "{body}");
        assert!(body.contains(text), "{body} should mention {text}");
    };

    // Malformed ids.
    let (s, b) = fetch(node, "hello").await;
    check(s, b, 400, "not a content id");
    let (s, b) = fetch(node, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG").await;
    check(s, b, 400, "sha2-256");
    // A well-formed CIDv1 with an unsupported hash function (sha2-256, 0x12).
    let mut cid = vec![0x01, 0x55, 0x12, 0x20];
    cid.extend_from_slice(&[7u8; 32]);
    let sha_cid = multibase::encode(multibase::Base::Base32Lower, &cid);
    let (s, b) = fetch(node, &sha_cid).await;
    check(s, b, 400, "hash function");
    // A blake3 CID whose digest is too short.
    let short = multibase::encode(
        multibase::Base::Base32Lower,
        [0x01, 0x55, 0x1e, 0x04, 1, 2, 3, 4],
    );
    let (s, b) = fetch(node, &short).await;
    check(s, b, 400, "short");
    assert_eq!(head(node, "hello").await, 400);

    // An id nobody has: 404 after a bounded search of the network.
    let unknown = zerostate::content_id::ContentId::of(b"nobody has this").to_string();
    let (s, b) = fetch(node, &unknown).await;
    check(s, b, 404, "not found");
    let text = scrape(node).await;
    assert_eq!(
        value(
            &text,
            r#"zerostate_p2p_content_fetches_total{outcome="not_found"}"#
        ),
        1.0
    );
    assert!(value(&text, "zerostate_cache_misses_total") >= 1.0);

    // Uploads: too large, and without the token.
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/content", node.http_addr());
    // A client that announces its body and waits for the answer before sending it (as curl
    // does with `Expect: 100-continue`) gets the 413 at once, never a broken pipe.
    for expect in ["Expect: 100-continue\r\n", ""] {
        let answer = raw_put_headers(node, 65 * 1024, expect).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{expect:?}: {answer}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        let body: serde_json::Value = serde_json::from_str(body).expect("a JSON 413");
        assert_eq!(
            body["error"],
            format!(
                "the request body of {} bytes exceeds the limit of {} bytes (content.max_object_bytes)",
                65 * 1024,
                64 * 1024
            ),
            "{answer}"
        );
    }
    let resp = client.put(&url).body(vec![1u8; 10]).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // Up to the limit is fine, and the returned id is the content's.
    let ok = vec![9u8; 64 * 1024];
    let id = put(node, &ok).await;
    assert_eq!(id, zerostate::content_id::ContentId::of(&ok).to_string());

    for n in nodes {
        n.shutdown().await;
    }
}
