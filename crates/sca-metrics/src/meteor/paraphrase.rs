//! METEOR 1.5's paraphrase table (`paraphrase-en.gz`): a trie over the "reference" phrases whose
//! nodes emit indices of "paraphrase" phrases, in file order (as `ParaphraseTransducer`).

use std::io::{BufRead, BufReader, Read};

use crate::ngram::FxHashMap;

pub(crate) struct Paraphrases {
    vocab: FxHashMap<Box<[u8]>, u32>,
    /// Trie edges: (node << 32 | word) -> child node. Node 0 is the root.
    edges: FxHashMap<u64, u32>,
    /// Emitted paraphrase indices of node n: `emit[emit_off[n]..emit_off[n + 1]]`.
    emit_off: Vec<u32>,
    emit: Vec<u32>,
    /// Words of paraphrase p: `para[para_off[p]..para_off[p + 1]]`.
    para_off: Vec<u32>,
    para: Vec<u32>,
}

fn is_delim(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0C)
}

impl Paraphrases {
    /// Reads the (decompressed) table: repeated triples of lines `probability`, `reference
    /// phrase`, `paraphrase`.
    pub(crate) fn read<R: Read>(r: R) -> std::io::Result<Self> {
        let mut rd = BufReader::with_capacity(1 << 20, r);
        let mut vocab: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        let mut edges: FxHashMap<u64, u32> = FxHashMap::default();
        edges.reserve(4_000_000);
        vocab.reserve(600_000);
        let mut n_nodes: u32 = 1;
        let mut emits: Vec<(u32, u32)> = Vec::with_capacity(5_500_000);
        let mut para_off: Vec<u32> = Vec::with_capacity(5_500_000);
        let mut para: Vec<u32> = Vec::with_capacity(16_000_000);
        para_off.push(0);
        let mut line = Vec::with_capacity(256);
        let mut ids: Vec<u32> = Vec::with_capacity(16);
        let map_words = |line: &[u8], ids: &mut Vec<u32>, vocab: &mut FxHashMap<Box<[u8]>, u32>| {
            ids.clear();
            for w in line.split(|&b| is_delim(b)).filter(|w| !w.is_empty()) {
                let next = vocab.len() as u32;
                let id = match vocab.get(w) {
                    Some(&id) => id,
                    None => {
                        vocab.insert(w.into(), next);
                        next
                    }
                };
                ids.push(id);
            }
        };
        loop {
            line.clear();
            if rd.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            // Reference phrase.
            line.clear();
            if rd.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            map_words(&line, &mut ids, &mut vocab);
            let mut node = 0u32;
            for &w in &ids {
                let key = ((node as u64) << 32) | w as u64;
                node = *edges.entry(key).or_insert_with(|| {
                    let n = n_nodes;
                    n_nodes += 1;
                    n
                });
            }
            let idx = (para_off.len() - 1) as u32;
            emits.push((node, idx));
            // Paraphrase.
            line.clear();
            rd.read_until(b'\n', &mut line)?;
            map_words(&line, &mut ids, &mut vocab);
            para.extend_from_slice(&ids);
            para_off.push(para.len() as u32);
        }
        // Stable by node: indices of one node stay in file order.
        emits.sort_unstable();
        let mut emit_off = vec![0u32; n_nodes as usize + 1];
        for &(n, _) in &emits {
            emit_off[n as usize + 1] += 1;
        }
        for k in 1..emit_off.len() {
            emit_off[k] += emit_off[k - 1];
        }
        let emit = emits.into_iter().map(|(_, i)| i).collect();
        Ok(Paraphrases { vocab, edges, emit_off, emit, para_off, para })
    }

    /// The vocabulary id of a word, or -1.
    pub(crate) fn translate(&self, w: &str) -> i64 {
        self.vocab.get(w.as_bytes()).map_or(-1, |&i| i as i64)
    }

    /// Reference phrases starting at `start`: (length, paraphrase index) pairs in the order the
    /// original returns them (shorter phrases first, then file order).
    pub(crate) fn paths(&self, words: &[i64], start: usize, out: &mut Vec<(usize, u32)>) {
        out.clear();
        let mut node = 0u32;
        for (k, &w) in words[start..].iter().enumerate() {
            if w < 0 {
                break;
            }
            let key = ((node as u64) << 32) | w as u64;
            match self.edges.get(&key) {
                Some(&c) => node = c,
                None => break,
            }
            let (a, b) = (self.emit_off[node as usize] as usize, self.emit_off[node as usize + 1] as usize);
            for &p in &self.emit[a..b] {
                out.push((k + 1, p));
            }
        }
    }

    /// Words of paraphrase `p`.
    pub(crate) fn paraphrase(&self, p: u32) -> &[u32] {
        &self.para[self.para_off[p as usize] as usize..self.para_off[p as usize + 1] as usize]
    }
}
