//! Word interning and n-gram keys shared by BLEU and CIDEr-D.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A small, fast, non-cryptographic hasher (the FxHash mixing step) for integer keys.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
pub(crate) type FxHashMap<K, V> = HashMap<K, V, FxBuild>;
pub(crate) type FxHashSet<K> = HashSet<K, FxBuild>;

/// An n-gram (order 1..=4) of interned word ids packed into 128 bits: 4 x 31-bit ids plus the
/// order in the top bits, so n-grams of different orders never collide.
pub(crate) type Gram = u128;

#[inline]
pub(crate) fn gram(ids: &[u32]) -> Gram {
    let mut g: u128 = (ids.len() as u128) << 124;
    for (k, &id) in ids.iter().enumerate() {
        g |= (id as u128) << (31 * k);
    }
    g
}

#[inline]
pub(crate) fn gram_order(g: Gram) -> usize {
    (g >> 124) as usize
}

/// Python's `str.split()` with no argument: splits on any whitespace, drops empty pieces.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}'))
        .filter(|w| !w.is_empty())
}

/// Maps words to dense ids.
#[derive(Default)]
pub(crate) struct Vocab<'a> {
    map: FxHashMap<&'a str, u32>,
}

impl<'a> Vocab<'a> {
    pub(crate) fn id(&mut self, w: &'a str) -> u32 {
        let next = self.map.len() as u32;
        *self.map.entry(w).or_insert(next)
    }

    pub(crate) fn ids(&mut self, s: &'a str) -> Vec<u32> {
        py_split(s).map(|w| self.id(w)).collect()
    }
}

/// Counts of every 1..=4-gram of a word-id sequence, as a small sorted vector.
pub(crate) fn count_grams(words: &[u32]) -> Vec<(Gram, u32)> {
    let mut v: Vec<Gram> = Vec::with_capacity(words.len() * 4);
    for n in 1..=4 {
        if words.len() >= n {
            for w in words.windows(n) {
                v.push(gram(w));
            }
        }
    }
    v.sort_unstable();
    let mut out: Vec<(Gram, u32)> = Vec::with_capacity(v.len());
    for g in v {
        match out.last_mut() {
            Some((last, c)) if *last == g => *c += 1,
            _ => out.push((g, 1)),
        }
    }
    out
}

/// Looks a gram up in a sorted count vector.
#[inline]
pub(crate) fn lookup(counts: &[(Gram, u32)], g: Gram) -> u32 {
    counts
        .binary_search_by(|(k, _)| k.cmp(&g))
        .map(|i| counts[i].1)
        .unwrap_or(0)
}
