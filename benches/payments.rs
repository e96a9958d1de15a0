//! Payment channels: what durability and signatures cost, each against its reference in the
//! same run.
//!
//! - `durable/fdatasync`: the reference, raw `fdatasync` commits of 64 bytes in the directory
//!   the ledgers live in.
//! - `durable/pay_sequential`: durable payments on one channel between two real nodes on
//!   127.0.0.1, one at a time (each is persisted by the payer, sent, persisted and
//!   countersigned by the payee, and persisted again before it is acknowledged).
//! - `durable/pay_concurrent_32`: 32 payments in flight on the same channel (queued ones are
//!   merged into one state: group commit on both sides).
//! - `state_update/ed25519_sign_verify`: the reference, one Ed25519 signature made and checked.
//! - `state_update/sign_verify_persist_{1,64}`: one binding state update of the pure state
//!   machine — the payer signs, the payee verifies and countersigns, the payer verifies — with
//!   both parties' records committed durably to a ledger, per update or per batch of 64.
//! - `settlement/{cooperative,unilateral_answered,unilateral_vanished}`: from the close
//!   request to the settled channel; the vanished case waits out a 1 s challenge window.
//!
//! Run with `cargo bench --bench payments`. Results go to docs/BENCHMARKS.md.

use std::io::Write as _;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use zerostate::ledger::{Ledger, Write};
use zerostate::payments::channel::{Channel, Op};
use zerostate::payments::record;
use zerostate::payments::wire::ChannelId;
use zerostate::{Config, NodeHandle};

mod support;
use support::{addr, start};

fn config(dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> Config {
    let mut c = support::config(dir, bootstrap);
    c.payments.challenge_secs = 1;
    c.payments.initial_credit = 1 << 40;
    c
}

/// Two connected nodes in `root`.
async fn pair(root: &std::path::Path) -> (NodeHandle, NodeHandle) {
    let a_dir = tempfile::tempdir_in(root).unwrap().keep();
    let b_dir = tempfile::tempdir_in(root).unwrap().keep();
    let b = start(config(&b_dir, vec![])).await;
    let a = start(config(&a_dir, vec![addr(&b)])).await;
    support::connected(&a).await;
    (a, b)
}

async fn open(a: &NodeHandle, b: &NodeHandle, deposit: u64) -> ChannelId {
    let view = a.payments().open(b.peer_id(), deposit, 0).await.unwrap();
    view.id.parse().unwrap()
}

fn durable(c: &mut Criterion) {
    let root = tempfile::tempdir_in(std::env::current_dir().unwrap().join("target")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("durable");
    group.throughput(Throughput::Elements(1));
    let mut file = std::fs::File::create(root.path().join("fsync")).unwrap();
    group.bench_function("fdatasync", |b| {
        b.iter(|| {
            file.write_all(&[7u8; 64]).unwrap();
            file.sync_data().unwrap();
        })
    });
    let (a, bnode) = rt.block_on(pair(root.path()));
    let id = rt.block_on(open(&a, &bnode, 1 << 39));
    group.bench_function("pay_sequential", |b| {
        b.iter(|| rt.block_on(a.payments().pay(id, 1)).unwrap())
    });
    group.throughput(Throughput::Elements(32));
    group.bench_function("pay_concurrent_32", |b| {
        b.iter(|| {
            rt.block_on(async {
                let pays = (0..32).map(|_| a.payments().pay(id, 1));
                for r in futures::future::join_all(pays).await {
                    r.unwrap();
                }
            })
        })
    });
    group.finish();
    rt.block_on(async {
        a.shutdown().await;
        bnode.shutdown().await;
    });
}

fn state_update(c: &mut Criterion) {
    let root = tempfile::tempdir_in(std::env::current_dir().unwrap().join("target")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("state_update");
    group.throughput(Throughput::Elements(1));
    let key = Keypair::generate_ed25519();
    let public = key.public();
    let msg = [9u8; 200];
    group.bench_function("ed25519_sign_verify", |b| {
        b.iter(|| {
            let sig = key.sign(&msg).unwrap();
            assert!(public.verify(&msg, &sig));
        })
    });

    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let (mut ca, proposal) = Channel::open(&ka, pb, ChannelId([1; 32]), 1 << 40, 0, 0).unwrap();
    let (mut cb, sig) = Channel::accept_open(&kb, pa, &proposal, 0, 0).unwrap();
    ca.countersigned(&sig, 0).unwrap();
    let (ledger, _, _thread) = Ledger::open(root.path()).unwrap();
    let mut update = || {
        let p = ca.propose(&ka, &Op::Pay(1), 0).unwrap();
        let sig = match cb.receive(&kb, pa, &p, 0).unwrap() {
            zerostate::payments::channel::Received::New { sig, .. } => sig,
            other => panic!("{other:?}"),
        };
        ca.countersigned(&sig, 0).unwrap();
        [
            Write::Channel(vec![1; 32], record::encode(&ca)),
            Write::Channel(vec![2; 32], record::encode(&cb)),
        ]
    };
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("sign_verify_persist_{batch}"), |b| {
            b.iter(|| {
                let mut writes = Vec::new();
                for _ in 0..batch {
                    writes.extend(update());
                }
                rt.block_on(ledger.commit(writes)).unwrap();
            })
        });
    }
    group.finish();
}

fn settlement(c: &mut Criterion) {
    let root = tempfile::tempdir_in(std::env::current_dir().unwrap().join("target")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("settlement");
    group.sample_size(10);
    let (a, b) = rt.block_on(pair(root.path()));
    for (name, unilateral) in [("cooperative", false), ("unilateral_answered", true)] {
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let id = open(&a, &b, 1_000).await;
                        a.payments().pay(id, 10).await.unwrap();
                        let started = Instant::now();
                        a.payments().close(id, unilateral).await.unwrap();
                        wait_settled(&a, id).await;
                        total += started.elapsed();
                    }
                    total
                })
            })
        });
    }
    // The peer is gone: the channel settles once the challenge window (1 s) has passed.
    group.bench_function("unilateral_vanished", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir_in(root.path()).unwrap().keep();
                    let gone = start(config(&dir, vec![addr(&a)])).await;
                    let id = open(&a, &gone, 1_000).await;
                    a.payments().pay(id, 10).await.unwrap();
                    gone.shutdown().await;
                    let started = Instant::now();
                    a.payments().close(id, true).await.unwrap();
                    wait_settled(&a, id).await;
                    total += started.elapsed();
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

async fn wait_settled(node: &NodeHandle, id: ChannelId) {
    loop {
        let view = node.payments().channel(id).await.unwrap().unwrap();
        if view.status == "settled" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = durable, state_update, settlement
}
criterion_main!(benches);
