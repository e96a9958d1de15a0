//! What verification costs against execution, for both task kinds at three sizes each.
//!
//! - `pow/{execute,verify}/<difficulty>`: searching a nonce with `difficulty` leading zero
//!   bits (expected 2^difficulty hashes; the input changes every iteration so the search
//!   length varies as in real tasks) against checking one nonce (one hash).
//! - `matmul/{execute,verify}/<n>`: the O(n³) product of two random n×n matrices modulo
//!   2^61 − 1 against Freivalds' check (2 rounds of O(n²)).
//!
//! Run with `cargo bench --bench market`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use zerostate::market::kinds::{Matrix, freivalds, pow_solve, pow_verify};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn pow(c: &mut Criterion) {
    let mut group = c.benchmark_group("pow");
    for difficulty in [8u32, 12, 16] {
        let mut i = 0u64;
        group.bench_with_input(
            BenchmarkId::new("execute", difficulty),
            &difficulty,
            |b, &d| {
                b.iter(|| {
                    i += 1;
                    pow_solve(&i.to_le_bytes(), d, far()).unwrap()
                })
            },
        );
        let input = b"zerostate".to_vec();
        let nonce = pow_solve(&input, difficulty, far()).unwrap();
        group.bench_with_input(
            BenchmarkId::new("verify", difficulty),
            &difficulty,
            |b, &d| b.iter(|| assert!(pow_verify(black_box(&input), d, black_box(nonce)))),
        );
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    let mut rng = StdRng::seed_from_u64(7);
    for n in [64usize, 256, 512] {
        let a = Matrix::random(n, &mut rng);
        let b = Matrix::random(n, &mut rng);
        group.bench_with_input(BenchmarkId::new("execute", n), &n, |bench, _| {
            bench.iter(|| a.multiply(black_box(&b), far()).unwrap())
        });
        let product = a.multiply(&b, far()).unwrap();
        group.bench_with_input(BenchmarkId::new("verify", n), &n, |bench, _| {
            bench.iter(|| assert!(freivalds(&a, &b, black_box(&product), &mut rng)))
        });
    }
    group.finish();
}

criterion_group!(benches, pow, matmul);
criterion_main!(benches);
