//! `matmul`: C = A·B for n×n matrices over the integers modulo the prime p = 2^61 − 1.
//!
//! Execution is O(n³). Verification is Freivalds' check, O(n²) per round: for a random
//! vector r over the field, A(Br) must equal Cr. If C ≠ AB, a round accepts with
//! probability at most 1/p (the nonzero row of AB − C must be orthogonal to r), so the
//! [`FREIVALDS_ROUNDS`] = 2 rounds accept a wrong product with probability at most
//! p^−2 < 2^−121. The matrices travel as content ids: the requester stores A and B, the
//! winner fetches them and stores C.

use std::time::Instant;

use bytes::Bytes;
use rand::Rng;

use super::ExecError;
use crate::content::{ContentError, ContentService};
use crate::content_id::ContentId;
use crate::market::task::AttemptError;

/// The field's prime, 2^61 − 1.
pub const MODULUS: u64 = (1 << 61) - 1;
/// Rounds of Freivalds' check.
pub const FREIVALDS_ROUNDS: u32 = 2;

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

/// Stores two random n×n matrices as content: the task's inputs.
pub(super) async fn prepare(
    n: u32,
    content: &ContentService,
) -> Result<(ContentId, ContentId), String> {
    let (a, b) = tokio::task::spawn_blocking(move || {
        let mut rng = rand::thread_rng();
        let a = Matrix::random(n as usize, &mut rng).to_bytes();
        let b = Matrix::random(n as usize, &mut rng).to_bytes();
        (a, b)
    })
    .await
    .map_err(|e| e.to_string())?;
    let a = content
        .put(Bytes::from(a))
        .await
        .map_err(|e| e.to_string())?;
    let b = content
        .put(Bytes::from(b))
        .await
        .map_err(|e| e.to_string())?;
    Ok((a, b))
}

/// Fetches and parses the two input matrices (the winner's side).
pub(super) async fn load(
    n: u32,
    a: ContentId,
    b: ContentId,
    content: &ContentService,
) -> Result<(Matrix, Matrix), String> {
    let (ba, bb) = futures::try_join!(content.get(a, true), content.get(b, true))
        .map_err(|e| format!("fetching the inputs: {e}"))?;
    let n = n as usize;
    Ok((
        Matrix::from_bytes(n, &ba).map_err(|e| e.to_string())?,
        Matrix::from_bytes(n, &bb).map_err(|e| e.to_string())?,
    ))
}

/// Checks the product `c` against the inputs with Freivalds' check. Problems with our own
/// inputs or our own content service are not the winner's fault.
pub(super) async fn verify(
    n: u32,
    a: ContentId,
    b: ContentId,
    c: ContentId,
    content: &ContentService,
) -> Result<(), AttemptError> {
    let (a, b) = futures::try_join!(content.get(a, true), content.get(b, true))
        .map_err(|_| AttemptError::InputFailed)?;
    let c = content.get(c, true).await.map_err(|e| match e {
        // Our own content service being overloaded or stopping is not the winner's doing.
        ContentError::Busy | ContentError::Stopped => AttemptError::VerifyFailed,
        _ => AttemptError::FetchFailed,
    })?;
    let n = n as usize;
    tokio::task::spawn_blocking(move || {
        let parse = |bytes: &Bytes| Matrix::from_bytes(n, bytes);
        let (Ok(a), Ok(b)) = (parse(&a), parse(&b)) else {
            return Err(AttemptError::InputFailed);
        };
        let Ok(c) = parse(&c) else {
            return Err(AttemptError::WrongResult);
        };
        if freivalds(&a, &b, &c, &mut rand::thread_rng()) {
            Ok(())
        } else {
            Err(AttemptError::WrongResult)
        }
    })
    .await
    .unwrap_or(Err(AttemptError::VerifyFailed))
}

/// Units of work of an n×n product, for pricing: 2^20 multiply-adds each.
pub(super) fn work_units(n: u32) -> u64 {
    u64::from(n).pow(3).div_ceil(1 << 20)
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
    fn multiplication_stops_at_the_deadline() {
        let mut rng = StdRng::seed_from_u64(4);
        let a = Matrix::random(8, &mut rng);
        assert_eq!(a.multiply(&a, Instant::now()), Err(ExecError::TimeLimit));
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
    }
}
