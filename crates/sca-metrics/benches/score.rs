//! Speed benchmark: scores synthetic Visual-Genome-style regions and prints a table.
//!
//! ```text
//! cargo bench -p sca-metrics --bench score                     # 230,000 regions
//! cargo bench -p sca-metrics --bench score -- --regions 5000   # smaller
//! cargo bench -p sca-metrics --bench score -- --write-corpus /tmp/vg.json   # only write it
//! cargo bench -p sca-metrics --bench score -- --corpus /tmp/vg.json         # score a file
//! ```
//!
//! METEOR needs its data (`bash scripts/setup-meteor.sh`); without it that row is skipped with
//! a note. `--json FILE` also writes the scores (for comparison with pycocoevalcap).

use std::path::PathBuf;
use std::time::Instant;

use sca_metrics::{parse_corpus, score_tokenized, tokenize_regions, MeteorData, Region, RegionId};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

const ADJ: &[&str] = &[
    "white",
    "black",
    "red",
    "blue",
    "green",
    "yellow",
    "brown",
    "gray",
    "grey",
    "large",
    "small",
    "tall",
    "short",
    "wooden",
    "metal",
    "glass",
    "old",
    "young",
    "striped",
    "black-and-white",
    "dark",
    "light",
    "open",
    "closed",
    "wet",
    "cloudy",
    "clear",
    "empty",
    "parked",
    "round",
];
const NOUN: &[&str] = &[
    "man",
    "woman",
    "person",
    "boy",
    "girl",
    "dog",
    "cat",
    "horse",
    "zebra",
    "giraffe",
    "elephant",
    "sky",
    "cloud",
    "clouds",
    "tree",
    "trees",
    "grass",
    "building",
    "window",
    "windows",
    "car",
    "bus",
    "train",
    "street",
    "sidewalk",
    "sign",
    "pole",
    "fence",
    "wall",
    "shirt",
    "t-shirt",
    "hat",
    "jacket",
    "table",
    "plate",
    "pizza",
    "bench",
    "water",
    "wave",
    "snow",
    "skateboard",
    "surfboard",
    "umbrella",
    "kite",
    "clock",
    "tower",
    "road",
    "leaves",
    "hair",
    "tire",
    "light",
    "door",
    "roof",
    "rock",
    "field",
    "bird",
    "boat",
    "cup",
    "laptop",
];
const VERB: &[&str] = &[
    "wearing",
    "holding",
    "riding",
    "sitting on",
    "standing on",
    "walking on",
    "looking at",
    "eating",
    "carrying",
    "covering",
    "hanging on",
    "parked on",
    "playing with",
];
const PREP: &[&str] = &[
    "on",
    "in",
    "near",
    "behind",
    "above",
    "under",
    "beside",
    "next to",
    "in front of",
    "on top of",
    "against",
    "of",
    "with",
];
const DET: &[&str] = &["a", "the", "a", "the", "two", "some", "an"];

fn noun_phrase(r: &mut Rng) -> String {
    let mut s = String::new();
    let det = r.pick(DET);
    s.push_str(det);
    s.push(' ');
    if r.chance(60) {
        s.push_str(r.pick(ADJ));
        s.push(' ');
        if r.chance(15) {
            s.push_str("and ");
            s.push_str(r.pick(ADJ));
            s.push(' ');
        }
    }
    let n = r.pick(NOUN);
    if r.chance(6) {
        s.push_str(n);
        s.push_str("'s ");
        s.push_str(r.pick(NOUN));
    } else {
        s.push_str(n);
    }
    s
}

/// One VG-style region phrase: "white clouds in blue sky", "man wearing a red hat.", ...
fn phrase(r: &mut Rng) -> String {
    let mut s = match r.below(5) {
        0 => format!("{} {} {}", noun_phrase(r), r.pick(VERB), noun_phrase(r)),
        1 => format!("{} {} {}", noun_phrase(r), r.pick(PREP), noun_phrase(r)),
        2 => format!("{} is {}", noun_phrase(r), r.pick(ADJ)),
        3 => format!("{} {}", r.pick(ADJ), r.pick(NOUN)),
        _ => noun_phrase(r),
    };
    if r.chance(10) {
        // Capitalized first letter.
        let mut c = s.chars();
        if let Some(f) = c.next() {
            s = f.to_uppercase().chain(c).collect();
        }
    }
    if r.chance(12) {
        s.push('.');
    } else if r.chance(3) {
        s.push_str(" .");
    }
    if r.chance(2) {
        s = s.replacen(' ', ", ", 1);
    }
    s
}

/// `n` synthetic regions: one reference each (as in Visual Genome), candidates that share
/// some words with it.
fn generate(n: usize, seed: u64) -> Vec<Region> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let reference = phrase(&mut r);
            let candidate = if r.chance(20) {
                reference.to_lowercase().trim_end_matches('.').to_string()
            } else if r.chance(50) {
                // Perturb the reference: swap some words.
                reference
                    .split(' ')
                    .map(|w| {
                        if r.chance(30) {
                            r.pick(NOUN).to_string()
                        } else {
                            w.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                phrase(&mut r)
            };
            Region {
                id: RegionId::Int(i as i64),
                candidate,
                references: vec![reference],
            }
        })
        .collect()
}

fn corpus_json(regions: &[Region]) -> String {
    serde_json::to_string(&serde_json::json!({ "name": "synthetic_vg", "regions": regions }))
        .unwrap()
}

fn main() {
    let mut n = 230_000usize;
    let mut write: Option<PathBuf> = None;
    let mut corpus: Option<PathBuf> = None;
    let mut json_out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--regions" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--regions N")
            }
            "--write-corpus" => write = args.next().map(PathBuf::from),
            "--corpus" => corpus = args.next().map(PathBuf::from),
            "--json" => json_out = args.next().map(PathBuf::from),
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
    }
    if let Some(path) = write {
        std::fs::write(&path, corpus_json(&generate(n, 0x5CA))).unwrap();
        eprintln!("wrote {n} regions to {}", path.display());
        return;
    }

    let threads = rayon::current_num_threads();
    let mut rows: Vec<(String, f64)> = Vec::new();
    let total = Instant::now();
    let t = Instant::now();
    let regions = match &corpus {
        Some(p) => parse_corpus(&std::fs::read_to_string(p).unwrap(), p).unwrap(),
        None => {
            // Round-trip through JSON so the timing includes reading a corpus file.
            let text = corpus_json(&generate(n, 0x5CA));
            parse_corpus(&text, "synthetic.json".as_ref()).unwrap()
        }
    };
    let n = regions.len();
    rows.push(("read corpus JSON".into(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let tok = tokenize_regions(&regions, None);
    let t_tok = t.elapsed().as_secs_f64();
    rows.push(("PTB tokenization".into(), t_tok));

    let t = Instant::now();
    let ngram = score_tokenized(&tok, None, None).unwrap();
    let t_ng = t.elapsed().as_secs_f64();
    rows.push(("BLEU-1..4 + ROUGE-L + CIDEr-D".into(), t_ng));
    rows.push((
        "  = tokenization + BLEU/ROUGE-L/CIDEr-D (target <= 20 s)".into(),
        t_tok + t_ng,
    ));

    let mut meteor_note = None;
    let mut meteor_score = None;
    match MeteorData::locate(None).and_then(|d| {
        let t = Instant::now();
        // Only the part of the paraphrase table this corpus can use (same scores, faster).
        let sentences = tok.iter().flat_map(|r| {
            std::iter::once(r.candidate.as_str()).chain(r.references.iter().map(String::as_str))
        });
        MeteorData::load_for(&d, sentences).map(|m| (m, t.elapsed().as_secs_f64()))
    }) {
        Ok((data, t_load)) => {
            rows.push((
                "METEOR data load (restricted to the corpus vocabulary)".into(),
                t_load,
            ));
            let t = Instant::now();
            let full = score_tokenized(&tok, Some(&data), None).unwrap();
            let t_all = t.elapsed().as_secs_f64();
            rows.push((
                "all metrics incl. METEOR (after tokenization)".into(),
                t_all,
            ));
            rows.push((
                "  = tokenization + all metrics + data load (target <= 120 s)".into(),
                t_tok + t_all + t_load,
            ));
            meteor_score = full.corpus.meteor;
            if let Some(p) = &json_out {
                std::fs::write(p, serde_json::to_string(&full.corpus).unwrap()).unwrap();
            }
        }
        Err(e) => {
            meteor_note = Some(format!("METEOR skipped: {e}"));
            if let Some(p) = &json_out {
                std::fs::write(p, serde_json::to_string(&ngram.corpus).unwrap()).unwrap();
            }
        }
    }
    rows.push((
        "end to end (this process)".into(),
        total.elapsed().as_secs_f64(),
    ));
    if let Ok(d) = MeteorData::locate(None) {
        // For reference: loading the whole paraphrase table, as `MeteorData::load` does.
        let t = Instant::now();
        if MeteorData::load(&d).is_ok() {
            rows.push((
                "(info) METEOR data load, full paraphrase table".into(),
                t.elapsed().as_secs_f64(),
            ));
        }
    }

    println!("sca-metrics benchmark: {n} regions, {threads} threads");
    println!("{:<62} {:>10}", "stage", "seconds");
    for (k, v) in &rows {
        println!("{k:<62} {v:>10.3}");
    }
    let c = &ngram.corpus;
    println!(
        "scores: BLEU-4 {:.4}  ROUGE-L {:.4}  CIDEr-D {:.4}  METEOR {}",
        c.bleu4,
        c.rouge_l,
        c.cider_d,
        meteor_score.map_or("-".to_string(), |m| format!("{m:.4}"))
    );
    if let Some(note) = meteor_note {
        println!("{note}");
    }
}
