//! Ping round-trip time of a node while it serves 4 MiB objects continuously, against the
//! same node idle, in one run: does content serving hold up the swarm's task?
//!
//! Node A holds four 4 MiB objects and re-verifies every read (`verify_on_read = "always"`,
//! the worst case for serving). Four nodes fetch them from A in a loop without caching them
//! (`cache.max_entries = 0`: verified, then dropped), so A serves without pause. A raw libp2p
//! peer pings A every 50 ms over its own connection. Phase 1: A idle; phase 2: A loaded.
//!
//! Run: `cargo bench --bench loaded_ping` (prints p50/p99 of both phases; goal: p99 loaded
//! <= 2x p99 idle); `LOADED_PING_VERIFY=peer` for the default read policy. Results go to
//! docs/BENCHMARKS.md.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, ping, tcp, yamux};
use zerostate::Config;
use zerostate::content::VerifyOnRead;

mod support;
use support::{addr, start};

const OBJECT: usize = 4 * 1024 * 1024;
const SAMPLES: usize = 200;

fn config(dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> Config {
    let mut c = support::config(dir, bootstrap);
    c.content.fetch_timeout_ms = 60_000;
    c.content.request_timeout_ms = 30_000;
    c
}

/// Collects `n` ping RTTs from `swarm`, in milliseconds.
async fn pings(swarm: &mut libp2p::Swarm<ping::Behaviour>, n: usize) -> Vec<f64> {
    let mut rtts = Vec::with_capacity(n);
    while rtts.len() < n {
        if let SwarmEvent::Behaviour(ping::Event {
            result: Ok(rtt), ..
        }) = swarm.select_next_some().await
        {
            rtts.push(rtt.as_secs_f64() * 1000.0);
        }
    }
    rtts
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, mut rtts: Vec<f64>) -> f64 {
    rtts.sort_by(f64::total_cmp);
    let (p50, p99) = (quantile(&rtts, 0.5), quantile(&rtts, 0.99));
    println!(
        "{name:>6}: ping RTT p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms ({} samples)",
        rtts[rtts.len() - 1],
        rtts.len()
    );
    p99
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut a_config = config(dirs[0].path(), vec![]);
        // `LOADED_PING_VERIFY=peer` measures the default policy (A's own objects are not
        // re-hashed when served) instead of the worst case.
        a_config.cache.verify_on_read = match std::env::var("LOADED_PING_VERIFY").as_deref() {
            Ok("peer") => VerifyOnRead::Peer,
            _ => VerifyOnRead::Always,
        };
        eprintln!("node A: verify_on_read = {:?}", a_config.cache.verify_on_read);
        let a = start(a_config).await;
        let mut ids = Vec::new();
        for i in 0..4u8 {
            let data: Vec<u8> = (0..OBJECT).map(|j| (j as u8) ^ i.wrapping_mul(31)).collect();
            ids.push(a.content().put(Bytes::from(data)).await.unwrap());
        }
        let mut loaders = Vec::new();
        for dir in &dirs[1..] {
            let mut c = config(dir.path(), vec![addr(&a)]);
            c.cache.max_entries = 0;
            loaders.push(start(c).await);
        }
        for l in &loaders {
            while l.p2p().connected_peers().await.unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        let mut pinger = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| {
                ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(50)))
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        pinger.dial(addr(&a)).unwrap();
        pings(&mut pinger, 20).await; // warm-up
        let idle = pings(&mut pinger, SAMPLES).await;

        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for (i, l) in loaders.iter().enumerate() {
            let content = l.content().clone();
            let stop = stop.clone();
            let ids = ids.clone();
            tasks.push(tokio::spawn(async move {
                let mut served = 0u64;
                let mut k = i;
                while !stop.is_cancelled() {
                    let got = content.get(ids[k % ids.len()], true).await.unwrap();
                    assert_eq!(got.len(), OBJECT);
                    served += 1;
                    k += 1;
                }
                served
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        let loaded = pings(&mut pinger, SAMPLES).await;
        let elapsed = started.elapsed();
        stop.cancel();
        let mut objects = 0;
        for t in tasks {
            objects += t.await.unwrap();
        }
        eprintln!("loaded phase took {elapsed:?}");
        let idle_p99 = report("idle", idle);
        let loaded_p99 = report("loaded", loaded);
        println!(
            "served {objects} objects of 4 MiB ({:.0} MiB/s) while loaded; p99 loaded / p99 idle = {:.2}",
            objects as f64 * 4.0 / elapsed.as_secs_f64(),
            loaded_p99 / idle_p99
        );
        for n in loaders {
            n.shutdown().await;
        }
        a.shutdown().await;
    });
}
