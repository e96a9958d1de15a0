//! `/metrics` at the cardinality cap: a registry holding the most peer-labelled series the cap
//! allows (`metrics.max_peer_series` peers × the 5 peer-labelled families = 10,000 series),
//! served over HTTP by the node's own server (`http::serve` with the node's `/metrics` route),
//! against encoding the same registry into a buffer, in the same run.
//!
//! - `metrics/encode`: the registry encoded into a buffer sized from the last scrape, by the
//!   endpoint's `metrics::Encoder` (the work of one scrape, no I/O).
//! - `metrics/http_get`: a `GET /metrics` over a kept-alive loopback connection, body read.
//! - `metrics/http_get_static`: the same text, already encoded, served by the same server: what
//!   the HTTP exchange of a body that size costs by itself.
//!
//! Besides criterion's estimates it prints p50 and p99 of both over 2,000 interleaved samples
//! (goal: HTTP p50 <= 2 ms at 10,000 series). Run with `cargo bench --bench metrics`; results
//! go to docs/BENCHMARKS.md. Under `cargo test` it runs each measurement once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use libp2p::PeerId;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use zerostate::http::{self, ApiConfig, HttpMetrics};
use zerostate::market::MarketMetrics;
use zerostate::market::reputation::Record;
use zerostate::metrics::{self, LabelValueMetrics};
use zerostate::payments::PaymentMetrics;

/// Peers tracked: with 5 peer-labelled families, 10,000 series.
const PEERS: usize = 2_000;
const PEER_FAMILIES: usize = 5;

/// A node's registry (build info, runtime, market and payment families) with `PEERS` peers
/// in every peer-labelled family, as the market records them when peers finish tasks.
fn registry(runtime: &tokio::runtime::Handle) -> Registry {
    let mut root = metrics::new_registry();
    let zs = root.sub_registry_with_prefix(metrics::NAMESPACE);
    metrics::register_node_info(zs, runtime.clone());
    let labels = LabelValueMetrics::register(zs);
    let mut market = MarketMetrics::register(zs, PEERS, &labels);
    let _payments = PaymentMetrics::register(zs, 100, &labels);
    for i in 0..PEERS as u64 {
        let record = Record {
            executed: 10 + i % 7,
            successes: 9,
            failures: 1 + i % 7,
            total_duration_ms: 12_345 + i,
            total_cost: 900 + i,
            score: 0.5 + (i % 50) as f64 / 100.0,
            ..Record::default()
        };
        market.peer_record(PeerId::random(), &record);
    }
    root
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    let p50 = quantile(&ms, 0.5);
    println!(
        "{name:>8}: p50 {p50:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        quantile(&ms, 0.99),
        ms[ms.len() - 1],
        ms.len()
    );
    p50
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registry = Arc::new(registry(runtime.handle()));
    let text = metrics::encode(&registry).unwrap();
    let peer_series = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("peer_id=\""))
        .count();
    assert_eq!(peer_series, PEERS * PEER_FAMILIES, "series at the cap");
    println!(
        "registry: {peer_series} peer-labelled series, {} lines, {} KiB of text",
        text.lines().count(),
        text.len() / 1024
    );

    // The node's server with its /metrics route, and (for reference) the same text already
    // encoded, served as it is: what HTTP alone costs for a body of that size.
    let cancel = CancellationToken::new();
    let body = bytes::Bytes::from(text.clone());
    let base = runtime.block_on(async {
        let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = http::metrics_router(registry.clone()).route(
            "/static",
            axum::routing::get(move || async move { body.clone() }),
        );
        tokio::spawn(http::serve(
            listener,
            app,
            ApiConfig::default(),
            HttpMetrics::default(),
            cancel.clone(),
        ));
        format!("http://{addr}")
    });
    let client = reqwest::Client::new();
    let fetch = |path: &'static str| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move {
            let resp = client.get(url).send().await.unwrap();
            assert!(resp.status().is_success());
            resp.bytes().await.unwrap().len()
        }
    };
    assert!(
        runtime.block_on(fetch("/metrics")) >= text.len() - 64,
        "the whole registry is served"
    );
    // The encoder the endpoint uses, already sized by one scrape.
    let encoder = metrics::Encoder::default();
    encoder.encode(&registry).unwrap();

    // Interleaved samples, so all three see the same machine.
    let samples = if bench { 2_000 } else { 5 };
    let (mut http_ms, mut static_ms, mut encode_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        let t = Instant::now();
        runtime.block_on(fetch("/metrics"));
        http_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        runtime.block_on(fetch("/static"));
        static_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        std::hint::black_box(encoder.encode(&registry).unwrap());
        encode_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let http_p50 = report("http_get", http_ms);
    report("static", static_ms);
    let encode_p50 = report("encode", encode_ms);
    println!(
        "HTTP p50 / encode p50 = {:.2}; goal HTTP p50 <= 2 ms: {}",
        http_p50 / encode_p50,
        if http_p50 <= 2.0 { "met" } else { "missed" }
    );

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("metrics");
    group.bench_function("encode", |b| b.iter(|| encoder.encode(&registry).unwrap()));
    group.bench_function("http_get", |b| {
        b.iter(|| runtime.block_on(fetch("/metrics")))
    });
    group.bench_function("http_get_static", |b| {
        b.iter(|| runtime.block_on(fetch("/static")))
    });
    group.finish();
    c.final_summary();
    cancel.cancel();
}
