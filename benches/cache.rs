//! Benchmarks of the content cache.
//!
//! - `verified_insert/{raw_blake3,cache_insert}/<size>`: hashing alone versus a verified
//!   `ContentCache::insert_verified` after `Verifier::verify` of the same bytes, so the report shows what the cache adds on
//!   top of the hash. Each iteration re-inserts the same id into a default-sized cache, so
//!   it measures verification plus the replace-and-refresh path; nothing is ever evicted.
//! - `hit_lookup/<policy>/<size>`: [`ContentCache::lookup`] (plus the re-verification the policy asks for) of present ids, cycling through a
//!   full cache. `never` skips read verification; `always` re-hashes on every read.
//!
//! Run with `cargo bench --bench cache`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use zerostate::content::cache::{
    CacheConfig, CacheMetrics, ContentCache, Lookup, Origin, VerifyOnRead,
};
use zerostate::content_id::ContentId;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn new_cache(config: CacheConfig) -> ContentCache {
    let mut registry = Registry::default();
    let metrics = CacheMetrics::register(registry.sub_registry_with_prefix("zerostate"));
    ContentCache::new(config, metrics)
}

/// `size` bytes that differ for each `seed`.
fn make_content(seed: usize, size: usize) -> Bytes {
    let mut data = vec![0u8; size];
    let mut state = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for byte in &mut data {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    Bytes::from(data)
}

fn size_label(size: usize) -> String {
    if size >= MIB {
        format!("{}MiB", size / MIB)
    } else {
        format!("{}KiB", size / KIB)
    }
}

fn verified_insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("verified_insert");
    for size in [KIB, 64 * KIB, MIB] {
        let data = make_content(0, size);
        let id = ContentId::of(&data);
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(
            BenchmarkId::new("raw_blake3", size_label(size)),
            &data,
            |b, data| b.iter(|| blake3::hash(black_box(data))),
        );

        let mut cache = new_cache(CacheConfig::default());
        let verifier = cache.verifier();
        group.bench_with_input(
            BenchmarkId::new("cache_insert", size_label(size)),
            &data,
            |b, data| {
                b.iter(|| {
                    let verified = verifier
                        .verify(black_box(id), data.clone())
                        .expect("content matches its id");
                    cache
                        .insert_verified(verified, Origin::Peer)
                        .expect("content fits")
                })
            },
        );
    }
    group.finish();
}

/// Fills a cache with `entries` entries of `size` bytes and benchmarks `get` over them.
fn bench_hits(c: &mut Criterion, policy: VerifyOnRead, entries: usize, size: usize) {
    let config = CacheConfig {
        max_bytes: (entries * size) as u64,
        max_entries: entries,
        verify_on_read: policy,
    };
    let mut cache = new_cache(config);
    let ids: Vec<ContentId> = (0..entries)
        .map(|seed| {
            let data = make_content(seed, size);
            let id = ContentId::of(&data);
            let verified = cache.verifier().verify(id, data).expect("matches");
            cache.insert_verified(verified, Origin::Peer).expect("fits");
            id
        })
        .collect();
    assert_eq!(cache.len(), entries, "every entry must stay cached");
    let verifier = cache.verifier();

    let policy_name = match policy {
        VerifyOnRead::Never => "never",
        VerifyOnRead::Peer => "peer",
        VerifyOnRead::Always => "always",
    };
    let mut group = c.benchmark_group("hit_lookup");
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function(
        BenchmarkId::new(policy_name, format!("{}x{}", entries, size_label(size))),
        |b| {
            b.iter(|| {
                next = (next + 1) % ids.len();
                let id = black_box(&ids[next]);
                // What the content service does for a read: look up, then (per policy)
                // verify the bytes off the cache and report the outcome.
                match cache.lookup(id) {
                    Lookup::Hit(data) => data,
                    Lookup::Recheck(data) => {
                        verifier.check(id, &data).expect("intact");
                        cache.recheck_passed();
                        data
                    }
                    Lookup::Miss => panic!("present"),
                }
            })
        },
    );
    group.finish();
}

fn hit_lookup(c: &mut Criterion) {
    bench_hits(c, VerifyOnRead::Never, 10_000, KIB);
    bench_hits(c, VerifyOnRead::Never, 1_000, 64 * KIB);
    bench_hits(c, VerifyOnRead::Always, 1_000, 64 * KIB);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verified_insert, hit_lookup
}
criterion_main!(benches);
