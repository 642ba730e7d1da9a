//! Every shared corpus reproduces pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr-D (corpus level
//! and per region, |diff| <= 1e-6) and its tokenized strings.

mod common;

use common::f;
use sca_metrics::{load_corpus, score_regions};

const TOL: f64 = 1e-6;

#[test]
fn corpora_match_pycocoevalcap_bleu_rouge_cider() {
    let mut checked = 0;
    for (name, path, exp) in common::corpora() {
        let regions = load_corpus(&path).unwrap();
        let s = score_regions(&regions, None, None).unwrap();
        let em = &exp["metrics"];
        let c = &s.corpus;
        for (key, got) in [
            ("bleu1", c.bleu1),
            ("bleu2", c.bleu2),
            ("bleu3", c.bleu3),
            ("bleu4", c.bleu4),
            ("rouge_l", c.rouge_l),
            ("cider_d", c.cider_d),
        ] {
            let want = f(em, key);
            assert!(
                (got - want).abs() <= TOL,
                "{name}: corpus {key} = {got}, expected {want}"
            );
        }
        let bs = &exp["bleu_stats"];
        assert_eq!(
            s.bleu_stats.testlen,
            bs["testlen"].as_u64().unwrap(),
            "{name}: testlen"
        );
        assert_eq!(
            s.bleu_stats.reflen,
            bs["reflen"].as_u64().unwrap(),
            "{name}: reflen"
        );
        for k in 0..4 {
            assert_eq!(
                s.bleu_stats.guess[k],
                bs["guess"][k].as_u64().unwrap(),
                "{name}: guess[{k}]"
            );
            assert_eq!(
                s.bleu_stats.correct[k],
                bs["correct"][k].as_u64().unwrap(),
                "{name}: correct[{k}]"
            );
        }
        let per = exp["per_region"].as_array().unwrap();
        assert_eq!(per.len(), s.per_region.len(), "{name}: region count");
        for (e, r) in per.iter().zip(&s.per_region) {
            assert_eq!(
                serde_json::to_value(&r.id).unwrap(),
                e["id"],
                "{name}: region order"
            );
            assert_eq!(
                r.candidate_tokenized,
                e["candidate_tokenized"].as_str().unwrap(),
                "{name} {}: candidate",
                r.id
            );
            let want_refs: Vec<&str> = e["references_tokenized"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(
                r.references_tokenized, want_refs,
                "{name} {}: references",
                r.id
            );
            let m = &r.metrics;
            for (key, got) in [
                ("bleu1", m.bleu1),
                ("bleu2", m.bleu2),
                ("bleu3", m.bleu3),
                ("bleu4", m.bleu4),
                ("rouge_l", m.rouge_l),
                ("cider_d", m.cider_d),
            ] {
                let want = f(e, key);
                assert!(
                    (got - want).abs() <= TOL,
                    "{name} region {}: {key} = {got}, expected {want}",
                    r.id
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} regions checked");
}
