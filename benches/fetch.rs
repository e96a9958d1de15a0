//! Fetch throughput of 1 MiB objects between two real nodes over loopback.
//!
//! Each iteration puts a fresh random object on node A (untimed), then times node B's
//! `ContentService::get`: Kademlia provider lookup, the `/zerostate/content/1` request over
//! TCP (noise + yamux), BLAKE3 verification and the cache insert.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::RngCore;
use zerostate::{Config, NodeHandle};

mod support;

const SIZE: usize = 1024 * 1024;

fn config(dir: &std::path::Path, bootstrap: Vec<libp2p::Multiaddr>) -> Config {
    let mut c = support::config(dir, bootstrap);
    c.log.filter = "error".into();
    c.content.max_object_bytes = 2 * SIZE as u64;
    c
}

async fn pair(dirs: &[tempfile::TempDir; 2]) -> (NodeHandle, NodeHandle) {
    let a = support::start(config(dirs[0].path(), vec![])).await;
    let b = support::start(config(dirs[1].path(), vec![support::addr(&a)])).await;
    support::connected(&b).await;
    (a, b)
}

fn fetch_1mib(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b) = rt.block_on(pair(&dirs));

    let mut group = c.benchmark_group("fetch_between_nodes");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("1MiB_over_loopback", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut data = vec![0u8; SIZE];
                    rand::thread_rng().fill_bytes(&mut data);
                    let id = a.content().put(Bytes::from(data)).await.unwrap();
                    let start = Instant::now();
                    let got = b.content().get(id, true).await.unwrap();
                    total += start.elapsed();
                    assert_eq!(got.len(), SIZE);
                }
                total
            })
        })
    });
    group.finish();
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
}

criterion_group!(benches, fetch_1mib);
criterion_main!(benches);
