//! Small, fast pseudo-random numbers for choosing peers.
//!
//! The load generator needs no cryptographic quality, only numbers that are cheap, spread
//! evenly and reproducible from a seed, so that a run can be repeated exactly with `--seed`.

/// One step of SplitMix64: a good 64-bit mix of `x`, usable as a stateless hash of an index.
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in `0..bound` from 64 random bits, without the bias of `%` (Lemire's method,
/// without the rejection step: the bias left is below 2^-32 for the bounds used here).
pub(super) fn below(bits: u64, bound: u64) -> u64 {
    ((u128::from(bits) * u128::from(bound)) >> 64) as u64
}

/// A seed that differs from run to run (the clock), for when none is given.
pub(super) fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    splitmix64(nanos as u64 ^ u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_within_its_bound_and_covers_it() {
        let mut seen = [false; 7];
        for i in 0..1_000 {
            let v = below(splitmix64(i), 7);
            assert!(v < 7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn splitmix_is_a_pure_function_of_its_input() {
        assert_eq!(splitmix64(42), splitmix64(42));
        assert_ne!(splitmix64(42), splitmix64(43));
    }
}
