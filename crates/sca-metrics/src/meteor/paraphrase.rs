//! METEOR 1.5's paraphrase table (`paraphrase-en.gz`): a trie over the "reference" phrases whose
//! nodes emit indices of "paraphrase" phrases, in file order (as `ParaphraseTransducer`).

use std::io::{BufReader, Read};

use crate::ngram::{FxHashMap, FxHashSet};

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
    /// phrase`, `paraphrase`. With `keep`, only entries whose words are all in `keep` are kept
    /// (the others can never match a sentence made of those words).
    pub(crate) fn read<R: Read + Send>(
        r: R,
        keep: Option<&FxHashSet<Vec<u8>>>,
    ) -> std::io::Result<Self> {
        // Decompression runs on its own thread, feeding blocks to the parser.
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(8);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut rd = BufReader::with_capacity(1 << 20, r);
                loop {
                    let mut block = vec![0u8; 4 << 20];
                    let mut filled = 0;
                    let res = loop {
                        match rd.read(&mut block[filled..]) {
                            Ok(0) => break Ok(()),
                            Ok(k) => {
                                filled += k;
                                if filled == block.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    if let Err(e) = res {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    block.truncate(filled);
                    let done = filled == 0;
                    if tx.send(Ok(block)).is_err() || done {
                        return;
                    }
                }
            });
            let mut b = Builder::new(keep);
            let mut carry: Vec<u8> = Vec::new();
            for block in rx {
                let block = block?;
                if block.is_empty() {
                    break;
                }
                let mut start = 0;
                for (k, &byte) in block.iter().enumerate() {
                    if byte == b'\n' {
                        if carry.is_empty() {
                            b.line(&block[start..k]);
                        } else {
                            carry.extend_from_slice(&block[start..k]);
                            b.line(&carry);
                            carry.clear();
                        }
                        start = k + 1;
                    }
                }
                carry.extend_from_slice(&block[start..]);
            }
            if !carry.is_empty() {
                b.line(&carry);
            }
            Ok(b.finish())
        })
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
            let (a, b) = (
                self.emit_off[node as usize] as usize,
                self.emit_off[node as usize + 1] as usize,
            );
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

/// Incremental construction from the table's lines.
struct Builder<'k> {
    keep: Option<&'k FxHashSet<Vec<u8>>>,
    lineno: usize,
    vocab: FxHashMap<Box<[u8]>, u32>,
    edges: FxHashMap<u64, u32>,
    n_nodes: u32,
    emits: Vec<(u32, u32)>,
    para_off: Vec<u32>,
    para: Vec<u32>,
    /// The pending reference phrase (kept until its paraphrase line is read).
    pending: Vec<u8>,
    pending_ok: bool,
    ids: Vec<u32>,
}

impl<'k> Builder<'k> {
    fn new(keep: Option<&'k FxHashSet<Vec<u8>>>) -> Self {
        let full = keep.is_none();
        let mut b = Builder {
            keep,
            lineno: 0,
            vocab: FxHashMap::default(),
            edges: FxHashMap::default(),
            n_nodes: 1,
            emits: Vec::new(),
            para_off: vec![0],
            para: Vec::new(),
            pending: Vec::new(),
            pending_ok: false,
            ids: Vec::new(),
        };
        if full {
            b.vocab.reserve(600_000);
            b.edges.reserve(4_000_000);
            b.emits.reserve(5_500_000);
            b.para_off.reserve(5_500_000);
            b.para.reserve(16_000_000);
        }
        b
    }

    fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
        line.split(|&b| is_delim(b)).filter(|w| !w.is_empty())
    }

    fn all_kept(&self, line: &[u8]) -> bool {
        match self.keep {
            None => true,
            Some(k) => Self::words(line).all(|w| k.contains(w)),
        }
    }

    fn map(&mut self, line: &[u8]) {
        self.ids.clear();
        for w in line.split(|&b| is_delim(b)).filter(|w| !w.is_empty()) {
            let next = self.vocab.len() as u32;
            let id = match self.vocab.get(w) {
                Some(&id) => id,
                None => {
                    self.vocab.insert(w.into(), next);
                    next
                }
            };
            self.ids.push(id);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let kind = self.lineno % 3;
        self.lineno += 1;
        match kind {
            // probability: unused, as in the original
            0 => {}
            1 => {
                self.pending_ok = self.all_kept(line);
                if self.pending_ok {
                    self.pending.clear();
                    self.pending.extend_from_slice(line);
                }
            }
            _ => {
                if !self.pending_ok || !self.all_kept(line) {
                    return;
                }
                let pending = std::mem::take(&mut self.pending);
                self.map(&pending);
                self.pending = pending;
                let mut node = 0u32;
                for k in 0..self.ids.len() {
                    let key = ((node as u64) << 32) | self.ids[k] as u64;
                    let n_nodes = &mut self.n_nodes;
                    node = *self.edges.entry(key).or_insert_with(|| {
                        let n = *n_nodes;
                        *n_nodes += 1;
                        n
                    });
                }
                let idx = (self.para_off.len() - 1) as u32;
                self.emits.push((node, idx));
                self.map(line);
                self.para.extend_from_slice(&self.ids);
                self.para_off.push(self.para.len() as u32);
            }
        }
    }

    fn finish(mut self) -> Paraphrases {
        // By node, then file order.
        self.emits.sort_unstable();
        let mut emit_off = vec![0u32; self.n_nodes as usize + 1];
        for &(n, _) in &self.emits {
            emit_off[n as usize + 1] += 1;
        }
        for k in 1..emit_off.len() {
            emit_off[k] += emit_off[k - 1];
        }
        let emit = self.emits.into_iter().map(|(_, i)| i).collect();
        Paraphrases {
            vocab: self.vocab,
            edges: self.edges,
            emit_off,
            emit,
            para_off: self.para_off,
            para: self.para,
        }
    }
}
