//! `pow`: find a nonce such that BLAKE3(input ‖ nonce as 8 bytes little-endian) has at
//! least `difficulty` leading zero bits. Expected work 2^difficulty hashes; verification is
//! one hash.

use std::time::Instant;

use super::ExecError;

/// How many nonces are tried between deadline checks.
const POW_CHECK_EVERY: u64 = 4096;

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

/// Units of work of a pow task, for pricing: 2^16 hashes each.
pub(super) fn work_units(difficulty: u32) -> u64 {
    (1u64 << difficulty).div_ceil(1 << 16)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
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
    fn the_search_stops_at_the_deadline() {
        assert_eq!(
            pow_solve(b"x", 32, Instant::now()),
            Err(ExecError::TimeLimit)
        );
    }

    proptest! {
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
