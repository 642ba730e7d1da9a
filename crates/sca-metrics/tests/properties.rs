//! Property tests: order invariance, perfect candidates, empty candidates.

use proptest::prelude::*;
use sca_metrics::{score_regions, Region, RegionId};

const WORDS: &[&str] = &[
    "a", "man", "woman", "dog", "riding", "horse", "white", "clouds", "in", "the", "sky", "red",
    "car", "on", "street", "is", "wearing", "hat", "two", "people", "tree", "green", "grass",
];

fn sentence() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(WORDS), 1..9).prop_map(|w| w.join(" "))
}

fn regions() -> impl Strategy<Value = Vec<Region>> {
    prop::collection::vec((sentence(), prop::collection::vec(sentence(), 1..4)), 1..12).prop_map(
        |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (c, r))| Region {
                    id: RegionId::Int(i as i64),
                    candidate: c,
                    references: r,
                })
                .collect()
        },
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scores_do_not_depend_on_region_order(rs in regions(), seed in any::<u64>()) {
        let a = score_regions(&rs, None, None).unwrap();
        let mut shuffled = rs.clone();
        // Deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let b = score_regions(&shuffled, None, None).unwrap();
        let (x, y) = (&a.corpus, &b.corpus);
        let pairs = [
            (x.bleu1, y.bleu1),
            (x.bleu2, y.bleu2),
            (x.bleu3, y.bleu3),
            (x.bleu4, y.bleu4),
            (x.rouge_l, y.rouge_l),
            (x.cider_d, y.cider_d),
        ];
        for (u, v) in pairs {
            prop_assert!(close(u, v), "{u} vs {v}");
        }
        for r in &a.per_region {
            let o = b.per_region.iter().find(|q| q.id == r.id).unwrap();
            prop_assert!(close(r.metrics.cider_d, o.metrics.cider_d));
            prop_assert!(close(r.metrics.rouge_l, o.metrics.rouge_l));
            prop_assert!(close(r.metrics.bleu4, o.metrics.bleu4));
        }
    }

    #[test]
    fn candidate_equal_to_its_only_reference_scores_one(s in sentence(), extra in regions()) {
        // At least 4 words so that BLEU-4 has 4-grams.
        let cand = format!("{s} on the big street");
        let first = Region { id: RegionId::Str("x".into()), candidate: cand.clone(), references: vec![cand] };
        let mut rs = vec![first];
        rs.extend(extra);
        let out = score_regions(&rs, None, None).unwrap();
        let m = &out.per_region[0].metrics;
        // pycocoevalcap's smoothing constants leave BLEU a hair below 1.
        prop_assert!((m.bleu4 - 1.0).abs() < 1e-8, "bleu4 {}", m.bleu4);
        prop_assert_eq!(m.rouge_l, 1.0);
    }

    #[test]
    fn empty_candidate_scores_zero_without_nan(rs in regions(), k in any::<prop::sample::Index>()) {
        let mut rs = rs;
        let i = k.index(rs.len());
        rs[i].candidate = String::new();
        let out = score_regions(&rs, None, None).unwrap();
        let m = &out.per_region[i].metrics;
        for v in [m.bleu1, m.bleu2, m.bleu3, m.bleu4, m.rouge_l, m.cider_d] {
            prop_assert!(!v.is_nan());
            prop_assert_eq!(v, 0.0);
        }
        let c = &out.corpus;
        for v in [c.bleu1, c.bleu2, c.bleu3, c.bleu4, c.rouge_l, c.cider_d] {
            prop_assert!(v.is_finite());
        }
    }

    #[test]
    fn all_empty_candidates_give_zero_corpus(rs in regions()) {
        let rs: Vec<Region> = rs.into_iter().map(|mut r| { r.candidate.clear(); r }).collect();
        let c = score_regions(&rs, None, None).unwrap().corpus;
        for v in [c.bleu1, c.bleu2, c.bleu3, c.bleu4, c.rouge_l, c.cider_d] {
            prop_assert_eq!(v, 0.0);
        }
    }
}
