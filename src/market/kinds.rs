//! Task kinds: what providers execute and how requesters verify it, at a fraction of the cost.
//!
//! - `pow`: find a nonce such that BLAKE3(input ‖ nonce as 8 bytes little-endian) has at
//!   least `difficulty` leading zero bits. Expected work 2^difficulty hashes; verification
//!   is one hash.
//! - `matmul`: C = A·B for n×n matrices over the integers modulo the prime p = 2^61 − 1.
//!   Execution is O(n³). Verification is Freivalds' check, O(n²) per round: for a random
//!   vector r over the field, A(Br) must equal Cr. If C ≠ AB, a round accepts with
//!   probability at most 1/p (the nonzero row of AB − C must be orthogonal to r), so the
//!   [`FREIVALDS_ROUNDS`] = 2 rounds accept a wrong product with probability at most
//!   p^−2 < 2^−121.
//!
//! Execution runs on the provider's worker pool through the [`Executor`] trait, so a library
//! user can plug in other implementations of these kinds; verification is not pluggable.

use std::time::Instant;

use rand::Rng;

/// The field's prime, 2^61 − 1.
pub const MODULUS: u64 = (1 << 61) - 1;
/// Rounds of Freivalds' check.
pub const FREIVALDS_ROUNDS: u32 = 2;
/// How many pow nonces are tried between deadline checks.
const POW_CHECK_EVERY: u64 = 4096;

/// Why execution stopped without a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The per-task time limit passed.
    #[error("the task's time limit passed")]
    TimeLimit,
    /// The input cannot be executed.
    #[error("bad input: {0}")]
    BadInput(String),
}

/// A square matrix over the integers modulo [`MODULUS`], row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    n: usize,
    data: Vec<u64>,
}

fn reduce(x: u128) -> u64 {
    // x mod (2^61 − 1) by folding: 2^61 ≡ 1.
    let m = u128::from(MODULUS);
    let x = (x & m) + (x >> 61);
    let x = (x & m) + (x >> 61);
    let x = x as u64;
    if x >= MODULUS { x - MODULUS } else { x }
}

fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

impl Matrix {
    /// A matrix of uniformly random field elements.
    pub fn random(n: usize, rng: &mut impl Rng) -> Self {
        let data = (0..n * n).map(|_| rng.gen_range(0..MODULUS)).collect();
        Self { n, data }
    }

    /// The dimension.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Element (i, j).
    pub fn get(&self, i: usize, j: usize) -> u64 {
        self.data[i * self.n + j]
    }

    /// The wire form: n·n little-endian u64, row-major.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Parses the wire form of an n×n matrix; every element must be below [`MODULUS`].
    pub fn from_bytes(n: usize, bytes: &[u8]) -> Result<Self, ExecError> {
        if bytes.len() != n * n * 8 {
            return Err(ExecError::BadInput(format!(
                "a {n}x{n} matrix is {} bytes, got {}",
                n * n * 8,
                bytes.len()
            )));
        }
        let data: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
            .collect();
        if data.iter().any(|&x| x >= MODULUS) {
            return Err(ExecError::BadInput("element not below 2^61 - 1".into()));
        }
        Ok(Self { n, data })
    }

    /// A·B, checking `deadline` after every row. O(n³).
    pub fn multiply(&self, other: &Matrix, deadline: Instant) -> Result<Matrix, ExecError> {
        let n = self.n;
        if other.n != n {
            return Err(ExecError::BadInput("matrices of different sizes".into()));
        }
        // Transpose B so both operands are read row by row.
        let mut bt = vec![0u64; n * n];
        for i in 0..n {
            for j in 0..n {
                bt[j * n + i] = other.data[i * n + j];
            }
        }
        let mut out = vec![0u64; n * n];
        for i in 0..n {
            if Instant::now() >= deadline {
                return Err(ExecError::TimeLimit);
            }
            let row = &self.data[i * n..(i + 1) * n];
            for j in 0..n {
                let col = &bt[j * n..(j + 1) * n];
                // Each folded product is below 2^62, so 512 of them fit a u128 easily.
                let acc: u128 = row
                    .iter()
                    .zip(col)
                    .map(|(&a, &b)| u128::from(mul(a, b)))
                    .sum();
                out[i * n + j] = reduce(acc);
            }
        }
        Ok(Matrix { n, data: out })
    }

    /// M·v. O(n²).
    pub fn mul_vec(&self, v: &[u64]) -> Vec<u64> {
        let n = self.n;
        (0..n)
            .map(|i| {
                let row = &self.data[i * n..(i + 1) * n];
                reduce(
                    row.iter()
                        .zip(v)
                        .map(|(&a, &b)| u128::from(mul(a, b)))
                        .sum(),
                )
            })
            .collect()
    }
}

/// Freivalds' check that `c` = `a`·`b`, with [`FREIVALDS_ROUNDS`] random vectors.
pub fn freivalds(a: &Matrix, b: &Matrix, c: &Matrix, rng: &mut impl Rng) -> bool {
    if a.n != b.n || a.n != c.n {
        return false;
    }
    (0..FREIVALDS_ROUNDS).all(|_| {
        let r: Vec<u64> = (0..a.n).map(|_| rng.gen_range(0..MODULUS)).collect();
        a.mul_vec(&b.mul_vec(&r)) == c.mul_vec(&r)
    })
}

/// BLAKE3(input ‖ nonce as 8 bytes little-endian).
pub fn pow_hash(input: &[u8], nonce: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(input);
    h.update(&nonce.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Leading zero bits of a hash.
pub fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// Whether `nonce` solves the pow task: one hash.
pub fn pow_verify(input: &[u8], difficulty: u32, nonce: u64) -> bool {
    leading_zero_bits(&pow_hash(input, nonce)) >= difficulty
}

/// Searches nonces from 0 until one solves the task or `deadline` passes.
pub fn pow_solve(input: &[u8], difficulty: u32, deadline: Instant) -> Result<u64, ExecError> {
    for nonce in 0u64.. {
        if nonce % POW_CHECK_EVERY == 0 && Instant::now() >= deadline {
            return Err(ExecError::TimeLimit);
        }
        if pow_verify(input, difficulty, nonce) {
            return Ok(nonce);
        }
    }
    Err(ExecError::TimeLimit)
}

/// A task's input, ready to execute.
#[derive(Debug, Clone)]
pub enum Input {
    /// A pow task.
    Pow {
        /// The input bytes.
        input: Vec<u8>,
        /// Leading zero bits wanted.
        difficulty: u32,
    },
    /// A matmul task with its matrices fetched and parsed.
    Matmul {
        /// Left.
        a: Matrix,
        /// Right.
        b: Matrix,
    },
}

/// What execution produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed {
    /// A pow nonce.
    Nonce(u64),
    /// A matmul product.
    Product(Matrix),
}

/// Executes tasks. Called on a worker thread, never on an async task; must return by
/// `deadline` (with [`ExecError::TimeLimit`] if unfinished).
pub trait Executor: Send + Sync + 'static {
    /// Executes `input`.
    fn execute(&self, input: &Input, deadline: Instant) -> Result<Computed, ExecError>;
}

/// The built-in executor of both kinds.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltIn;

impl Executor for BuiltIn {
    fn execute(&self, input: &Input, deadline: Instant) -> Result<Computed, ExecError> {
        match input {
            Input::Pow { input, difficulty } => {
                pow_solve(input, *difficulty, deadline).map(Computed::Nonce)
            }
            Input::Matmul { a, b } => a.multiply(b, deadline).map(Computed::Product),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn naive(a: &Matrix, b: &Matrix) -> Matrix {
        let n = a.n;
        let mut data = vec![0; n * n];
        for i in 0..n {
            for j in 0..n {
                let mut s = 0u128;
                for k in 0..n {
                    s = (s + u128::from(a.get(i, k)) * u128::from(b.get(k, j)))
                        % u128::from(MODULUS);
                }
                data[i * n + j] = s as u64;
            }
        }
        Matrix { n, data }
    }

    #[test]
    fn multiply_matches_the_textbook_product() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [1, 2, 7, 33] {
            let (a, b) = (Matrix::random(n, &mut rng), Matrix::random(n, &mut rng));
            assert_eq!(a.multiply(&b, far()).unwrap(), naive(&a, &b));
        }
    }

    #[test]
    fn freivalds_accepts_the_product_and_rejects_a_wrong_one() {
        let mut rng = StdRng::seed_from_u64(2);
        let (a, b) = (Matrix::random(16, &mut rng), Matrix::random(16, &mut rng));
        let c = a.multiply(&b, far()).unwrap();
        assert!(freivalds(&a, &b, &c, &mut rng));
        for (i, j) in [(0, 0), (15, 15), (3, 9)] {
            let mut wrong = c.clone();
            wrong.data[i * 16 + j] = (wrong.data[i * 16 + j] + 1) % MODULUS;
            assert!(!freivalds(&a, &b, &wrong, &mut rng), "missed ({i},{j})");
        }
        assert!(!freivalds(&a, &b, &Matrix::random(16, &mut rng), &mut rng));
    }

    #[test]
    fn matrices_round_trip_and_reject_bad_bytes() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = Matrix::random(5, &mut rng);
        assert_eq!(Matrix::from_bytes(5, &a.to_bytes()).unwrap(), a);
        assert!(Matrix::from_bytes(5, &a.to_bytes()[1..]).is_err());
        assert!(Matrix::from_bytes(1, &u64::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn pow_solves_and_verifies_with_one_hash() {
        let nonce = pow_solve(b"zerostate", 12, far()).unwrap();
        assert!(pow_verify(b"zerostate", 12, nonce));
        assert!(leading_zero_bits(&pow_hash(b"zerostate", nonce)) >= 12);
        // Any smaller nonce fails (the search starts at 0).
        assert!((0..nonce).all(|n| !pow_verify(b"zerostate", 12, n)));
    }

    #[test]
    fn execution_stops_at_the_deadline() {
        let past = Instant::now();
        assert_eq!(pow_solve(b"x", 32, past), Err(ExecError::TimeLimit));
        let mut rng = StdRng::seed_from_u64(4);
        let a = Matrix::random(8, &mut rng);
        assert_eq!(a.multiply(&a, past), Err(ExecError::TimeLimit));
    }

    proptest! {
        #[test]
        fn freivalds_rejects_any_single_wrong_entry(
            seed in any::<u64>(), n in 1usize..12, pos in any::<usize>(), delta in 1..MODULUS,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let (a, b) = (Matrix::random(n, &mut rng), Matrix::random(n, &mut rng));
            let mut c = a.multiply(&b, far()).unwrap();
            let k = pos % (n * n);
            c.data[k] = (c.data[k] + delta) % MODULUS;
            prop_assert!(!freivalds(&a, &b, &c, &mut rng));
        }

        #[test]
        fn leading_zero_bits_counts_bits(byte in any::<u8>(), zeros in 0usize..4) {
            let mut h = [0xffu8; 32];
            h[..zeros].fill(0);
            h[zeros] = byte;
            // A zero byte is followed by 0xff, which has no leading zeros.
            let want = zeros as u32 * 8 + byte.leading_zeros();
            prop_assert_eq!(leading_zero_bits(&h), want);
        }
    }
}
