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
        assert!((got - want).abs() <= TOL, "{name}: corpus METEOR = {got}, expected {want}");
        worst = worst.max((got - want).abs());
        for (e, r) in exp["per_region"].as_array().unwrap().iter().zip(&s.per_region) {
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
        &["a person rides a horse".to_string(), "a man on a horse".to_string()],
    );
    assert!((s.score() - 0.78182).abs() < 1e-5, "score {}", s.score());
    assert_eq!(s.chunks, 1.0);
}

#[test]
fn missing_data_error_names_the_setup_command() {
    let err = MeteorData::load(std::path::Path::new("/nonexistent/meteor-data")).err().expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("bash scripts/setup-meteor.sh"), "{msg}");
    assert!(msg.contains("SCA_METEOR_DATA"), "{msg}");
}
