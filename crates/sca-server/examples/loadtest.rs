//! Load test and latency bench of the server, loopback only, bounded in count and time.
//!
//! ```text
//! cargo run --release -p sca-server --example loadtest -- \
//!     [--model BUNDLE_DIR] [--clients 50] [--requests 5000] [--malformed-pct 10] \
//!     [--huge-mb 50] [--deadline-secs 600] [--bench-only] [--repeats 20]
//! ```
//!
//! Without `--model`, the first parity fixture (`$SCA_PARITY_DIR`, default
//! `../shared/parity`) is exported as an f32 bundle into a temp dir. Prints (1) a sequential
//! latency table (one client: embed with ONNX Runtime and with candle, cached embed, predict)
//! and (2) the load run: 50 clients, 5,000 requests mixing embed and predict, 10% malformed
//! (truncated images, wrong content type, invalid JSON, NaN / out-of-image coordinates, 50 MB
//! bodies, a 30,000 x 30,000 PNG header, clients that disconnect mid-upload), with p50/p99
//! per kind, the 503 count and the process's peak RSS. Exits 1 on any violation (a 5xx other
//! than 503, a malformed request without a JSON 4xx, a well-formed one that failed, or work
//! left in the queue).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{get, post, predict_image};
use common::{load, TestServer};

struct Args {
    model: Option<PathBuf>,
    clients: usize,
    requests: usize,
    malformed_pct: usize,
    huge_mb: usize,
    deadline_secs: u64,
    bench_only: bool,
    repeats: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: None,
        clients: 50,
        requests: 5000,
        malformed_pct: 10,
        huge_mb: 50,
        deadline_secs: 600,
        bench_only: false,
        repeats: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--model" => a.model = Some(PathBuf::from(val())),
            "--clients" => a.clients = val().parse().unwrap(),
            "--requests" => a.requests = val().parse().unwrap(),
            "--malformed-pct" => a.malformed_pct = val().parse().unwrap(),
            "--huge-mb" => a.huge_mb = val().parse().unwrap(),
            "--deadline-secs" => a.deadline_secs = val().parse().unwrap(),
            "--bench-only" => a.bench_only = true,
            "--repeats" => a.repeats = val().parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn median_ms(mut f: impl FnMut() -> u16, n: usize) -> (f64, f64) {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let s = f();
            assert_eq!(s, 200);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn main() {
    let args = parse_args();
    let fixture = common::sca_fixtures()[0].clone();
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| common::bundle(&fixture, true));
    let image = std::fs::read(fixture.join("image.png")).unwrap();
    let request = common::fixture_request(&fixture);
    println!("model {}", model.display());

    // (1) Sequential latency, one client.
    println!(
        "\n{:<34} {:>10} {:>10}",
        "single client", "p50 ms", "p99 ms"
    );
    for encoder in [
        sca_server::EncoderChoice::Auto,
        sca_server::EncoderChoice::Candle,
    ] {
        let mut cfg = common::config(&model);
        cfg.encoder = encoder;
        let srv = TestServer::start(cfg);
        let name = srv.server.encoder_name().to_string();
        let a = srv.addr;
        let mut k = 0u32;
        let (p50, p99) = median_ms(
            || {
                k += 1;
                post(a, "/v1/embed", "image/png", &common::png_image(160, 120, k)).status
            },
            20,
        );
        println!(
            "{:<34} {p50:>10.2} {p99:>10.2}",
            format!("embed, new image ({name})")
        );
        if encoder == sca_server::EncoderChoice::Auto {
            let (p50, p99) = median_ms(
                || post(a, "/v1/embed", "image/png", &image).status,
                args.repeats,
            );
            println!("{:<34} {p50:>10.2} {p99:>10.2}", "embed, cached");
            let id = sca_core::bundle::sha256_hex(&image);
            let mut req = request.clone();
            req["embedding_id"] = id.into();
            let body = req.to_string();
            let (p50, p99) = median_ms(
                || post(a, "/v1/predict", "application/json", body.as_bytes()).status,
                args.repeats,
            );
            println!("{:<34} {p50:>10.2} {p99:>10.2}", "predict by embedding_id");
            let (p50, p99) = median_ms(|| predict_image(a, &image, &request).status, args.repeats);
            println!(
                "{:<34} {p50:>10.2} {p99:>10.2}",
                "predict with image (cached)"
            );
            let (p50, p99) = median_ms(|| get(a, "/healthz").status, 50);
            println!("{:<34} {p50:>10.2} {p99:>10.2}", "healthz");
        }
    }
    if args.bench_only {
        return;
    }

    // (2) The load run.
    let cfg = common::config(&model);
    let srv = TestServer::start(cfg);
    let warm = post(srv.addr, "/v1/embed", "image/png", &image);
    assert_eq!(warm.status, 200);
    let id = warm.header("x-sca-embedding-id").unwrap().to_string();
    let opts = load::LoadOptions {
        clients: args.clients,
        requests: args.requests,
        malformed_pct: args.malformed_pct,
        deadline: Duration::from_secs(args.deadline_secs),
        huge_body: args.huge_mb * 1024 * 1024,
    };
    println!(
        "\nload: {} clients, {} requests, {}% malformed, encoder {}",
        opts.clients,
        opts.requests,
        opts.malformed_pct,
        srv.server.encoder_name()
    );
    let mut report = load::run(
        srv.addr,
        &opts,
        Arc::new(image),
        id,
        request,
        Arc::new(|i| common::png_image(40 + (i % 120) as u32, 30 + (i % 70) as u32, i as u32)),
    );
    print!("{}", report.table());
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.server.queue().depth() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = srv.server.queue().depth();
    println!("queue depth after the run: {left}");
    for v in report.violations.iter().take(20) {
        println!("violation: {v}");
    }
    if !report.violations.is_empty() || left != 0 || report.sent < opts.requests {
        std::process::exit(1);
    }
}
