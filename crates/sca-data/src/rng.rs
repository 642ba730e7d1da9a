//! A small deterministic PRNG (SplitMix64) whose stream is fixed by this crate, so generated
//! scenes, augmentations and data orders are identical on every machine and every version of
//! the dependencies.
//!
//! Only integer arithmetic and exactly-rounded float operations are used, so results do not
//! depend on the platform's math library.

/// SplitMix64 (Steele, Lea & Flood 2014): `state += 0x9e3779b97f4a7c15`, then a 64-bit mix.
///
/// ```
/// use sca_data::rng::Rng;
/// let mut a = Rng::new(42);
/// let mut b = Rng::new(42);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.uniform();
/// assert!((0.0..1.0).contains(&u));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 output function (a bijective 64-bit mixer).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for `(seed, keys...)`: e.g. `Rng::derive(seed, &[epoch, index])`.
    /// Different key lists give unrelated streams.
    pub fn derive(seed: u64, keys: &[u64]) -> Self {
        let mut s = mix64(seed ^ 0x5ca0_da7a_0000_0001);
        for (i, &k) in keys.iter().enumerate() {
            s = mix64(s ^ mix64(k.wrapping_add(GOLDEN.wrapping_mul(i as u64 + 1))));
        }
        Self { state: s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)` (numpy `uniform(lo, hi)` = `lo + (hi - lo) * u`).
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` (`n > 0`; returns 0 for `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform integer in `lo..=hi` (`lo <= hi`).
    pub fn range_inclusive(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A uniformly random element (`None` for an empty slice).
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }

    /// Shuffles in place (Fisher–Yates, from the back).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference stream of SplitMix64 seeded with 0 (as in the original C code).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn derive_separates_streams() {
        let a = Rng::derive(1, &[0, 5]).next_u64();
        let b = Rng::derive(1, &[5, 0]).next_u64();
        let c = Rng::derive(2, &[0, 5]).next_u64();
        let d = Rng::derive(1, &[0, 5]).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, d);
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut r = Rng::new(7);
        let mut p = r.permutation(100);
        p.sort_unstable();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
        for _ in 0..1000 {
            assert!(r.below(3) < 3);
            let x = r.uniform_range(0.1, 2.0);
            assert!((0.1..2.0).contains(&x));
        }
    }
}
