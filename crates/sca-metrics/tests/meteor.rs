//! METEOR 1.5 reproduces pycocoevalcap's METEOR on every shared corpus (corpus level and per
//! region, |diff| <= 1e-3). Needs the METEOR data: `bash scripts/setup-meteor.sh`.

mod common;

use std::sync::OnceLock;

use common::f;
use sca_metrics::{load_corpus, score_regions, MeteorData};

fn data() -> &'static MeteorData {
    static DATA: OnceLock<MeteorData> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = common::meteor_dir();
        MeteorData::load(&dir).unwrap_or_else(|e| {
            panic!(
                "{e}\n\nThe METEOR tests need the METEOR 1.5 data: run `bash scripts/setup-meteor.sh` \
                 from the repository root (or set SCA_METEOR_DATA to an installed copy)."
            )
        })
    })
}

const TOL: f64 = 1e-3;

#[test]
fn corpora_match_pycocoevalcap_meteor() {
    let data = data();
    let mut worst = 0.0f64;
    for (name, path, exp) in common::corpora() {
        let regions = load_corpus(&path).unwrap();
        let s = score_regions(&regions, Some(data), None).unwrap();
        let got = s.corpus.meteor.unwrap();
        let want = f(&exp["metrics"], "meteor");
        assert!(
            (got - want).abs() <= TOL,
            "{name}: corpus METEOR = {got}, expected {want}"
        );
        worst = worst.max((got - want).abs());
        for (e, r) in exp["per_region"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&s.per_region)
        {
            let got = r.metrics.meteor.unwrap();
            let want = f(e, "meteor");
            assert!(
                (got - want).abs() <= TOL,
                "{name} region {}: METEOR = {got}, expected {want} (candidate {:?}, references {:?})",
                r.id,
                r.candidate_tokenized,
                r.references_tokenized
            );
            worst = worst.max((got - want).abs());
        }
    }
    eprintln!("largest METEOR difference: {worst:e}");
}

#[test]
fn worked_example_from_the_notes() {
    let s = data().segment_stats(
        "a man riding a horse",
        &[
            "a person rides a horse".to_string(),
            "a man on a horse".to_string(),
        ],
    );
    assert!((s.score() - 0.78182).abs() < 1e-5, "score {}", s.score());
    assert_eq!(s.chunks, 1.0);
}

#[test]
fn missing_data_error_names_the_setup_command() {
    let err = MeteorData::load(std::path::Path::new("/nonexistent/meteor-data"))
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("bash scripts/setup-meteor.sh"), "{msg}");
    assert!(msg.contains("SCA_METEOR_DATA"), "{msg}");
}

#[test]
fn restricted_loading_gives_identical_statistics() {
    let full = data();
    let corpora: Vec<_> = common::corpora()
        .into_iter()
        .map(|(_, p, _)| load_corpus(&p).unwrap())
        .collect();
    let tok: Vec<_> = corpora
        .iter()
        .map(|c| sca_metrics::tokenize_regions(c, None))
        .collect();
    let sentences = tok.iter().flatten().flat_map(|r| {
        std::iter::once(r.candidate.as_str()).chain(r.references.iter().map(String::as_str))
    });
    let restricted = MeteorData::load_for(&common::meteor_dir(), sentences).unwrap();
    for t in &tok {
        let segs: Vec<(&str, &[String])> = t
            .iter()
            .map(|r| (r.candidate.as_str(), r.references.as_slice()))
            .collect();
        assert_eq!(full.corpus_stats(&segs), restricted.corpus_stats(&segs));
        for (s, (h, rs)) in full.corpus_stats(&segs).iter().zip(&segs) {
            assert_eq!(
                *s,
                full.segment_stats(h, rs),
                "batch and single-segment paths differ on {h:?}"
            );
        }
    }
}

#[test]
fn meteor_is_order_invariant_and_zero_for_empty_candidates() {
    let data = data();
    let path = common::shared_dir().join("metrics/corpora/coco_sample_four_refs.json");
    let mut regions = load_corpus(&path).unwrap();
    let a = score_regions(&regions, Some(data), None).unwrap();
    regions.reverse();
    let b = score_regions(&regions, Some(data), None).unwrap();
    assert!((a.corpus.meteor.unwrap() - b.corpus.meteor.unwrap()).abs() < 1e-12);
    regions[3].candidate = String::new();
    let c = score_regions(&regions, Some(data), None).unwrap();
    assert_eq!(c.per_region[3].metrics.meteor, Some(0.0));
    assert!(c.corpus.meteor.unwrap().is_finite());
}
