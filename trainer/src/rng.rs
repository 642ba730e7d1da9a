//! A small counter-style PRNG (SplitMix64) for initialisation and dropout: fixed streams on
//! every machine, and states that are plain integers (trivial to checkpoint).

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser (a bijective 64-bit mixer).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a list of integers (order matters).
pub fn hash_keys(seed: u64, keys: &[u64]) -> u64 {
    let mut s = mix64(seed ^ 0x7a1e_5eed_0000_0001);
    for (i, &k) in keys.iter().enumerate() {
        s = mix64(s ^ mix64(k.wrapping_add(GOLDEN.wrapping_mul(i as u64 + 1))));
    }
    s
}

/// FNV-1a of a string (to key streams by parameter name).
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64 generator.
///
/// ```
/// let mut a = trainer::rng::SplitMix::derive(7, "w");
/// let mut b = trainer::rng::SplitMix::derive(7, "w");
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!((0.0..1.0).contains(&a.uniform()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix {
    state: u64,
}

impl SplitMix {
    /// Starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for `(seed, name)`.
    pub fn derive(seed: u64, name: &str) -> Self {
        Self::new(hash_keys(seed, &[hash_str(name)]))
    }

    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` (53 bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
