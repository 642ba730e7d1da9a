use sca_metrics::*;
fn main() {
    let data = MeteorData::load(std::path::Path::new("/work/main/.cache/meteor")).unwrap();
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 && args[1] == "norm" {
        use std::io::BufRead;
        for l in std::io::stdin().lock().lines() { println!("{}", data.normalize(&l.unwrap())); }
        return;
    }
    if args.len() > 1 && args[1] == "stats" {
        // lines: hyp \t ref1 \t ref2 ...
        use std::io::BufRead;
        for l in std::io::stdin().lock().lines() { let l = l.unwrap(); let p: Vec<&str> = l.split('\t').collect();
            let refs: Vec<String> = p[1..].iter().map(|s| s.to_string()).collect();
            let s = data.segment_stats(p[0], &refs); println!("{:?} {}", s, s.score()); }
        return;
    }
    let dir = std::path::Path::new("/work/shared/metrics");
    for e in std::fs::read_dir(dir.join("corpora")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected").join(format!("{name}.expected.json"))).unwrap()).unwrap();
        let regions = load_corpus(&p).unwrap();
        let s = score_regions(&regions, Some(&data), None).unwrap();
        for (e, r) in exp["per_region"].as_array().unwrap().iter().zip(&s.per_region) {
            let got = r.metrics.meteor.unwrap(); let want = e["meteor"].as_f64().unwrap();
            if (got-want).abs() > 1e-9 { println!("{name} {} got {got} want {want} | {:?} | {:?}", r.id, r.candidate_tokenized, r.references_tokenized); }
        }
        println!("{name} corpus got {} want {}", s.corpus.meteor.unwrap(), exp["metrics"]["meteor"]);
    }
}
