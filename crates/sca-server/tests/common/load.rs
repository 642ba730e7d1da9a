//! The load test (loopback only, bounded in count and time): concurrent clients send a mix of
//! embed and predict requests with a share of malformed ones, and every answer is checked.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{self, multipart, Resp};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub clients: usize,
    pub requests: usize,
    /// Percent of malformed requests.
    pub malformed_pct: usize,
    /// Stop sending new requests after this long.
    pub deadline: Duration,
    /// Bytes of the oversized body (the server's limit must be below it).
    pub huge_body: usize,
}

/// What the run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: usize,
    /// kind -> latencies in ms (answered requests)
    pub latencies: BTreeMap<&'static str, Vec<f64>>,
    /// status -> count
    pub statuses: BTreeMap<u16, usize>,
    pub busy_503: usize,
    /// Problems: wrong status, missing JSON error, transport errors on well-formed requests.
    pub violations: Vec<String>,
    pub wall: Duration,
    pub peak_rss_kib: u64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

impl LoadReport {
    /// A table of p50/p99 per request kind.
    pub fn table(&mut self) -> String {
        let mut out = format!(
            "{:<22} {:>6} {:>10} {:>10} {:>10}\n",
            "kind", "n", "p50 ms", "p99 ms", "max ms"
        );
        let mut all = Vec::new();
        for (k, v) in self.latencies.iter_mut() {
            all.extend_from_slice(v);
            let n = v.len();
            let (p50, p99, max) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
            out.push_str(&format!(
                "{k:<22} {n:>6} {p50:>10.1} {p99:>10.1} {max:>10.1}\n"
            ));
        }
        let n = all.len();
        let (p50, p99, max) = (pct(&mut all, 0.5), pct(&mut all, 0.99), pct(&mut all, 1.0));
        out.push_str(&format!(
            "{:<22} {n:>6} {p50:>10.1} {p99:>10.1} {max:>10.1}\n",
            "all"
        ));
        out.push_str(&format!(
            "sent {} in {:.1}s ({:.0} req/s); statuses {:?}; 503 busy {}; peak RSS {:.1} MiB; violations {}\n",
            self.sent,
            self.wall.as_secs_f64(),
            self.sent as f64 / self.wall.as_secs_f64().max(1e-9),
            self.statuses,
            self.busy_503,
            self.peak_rss_kib as f64 / 1024.0,
            self.violations.len()
        ));
        out
    }
}

/// Resident memory of this process now and at its peak (KiB), from /proc/self/status.
pub fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    EmbedMiss,
    EmbedHit,
    PredictImage,
    PredictId,
    Truncated,
    WrongType,
    BadJson,
    NanCoords,
    OutsideCoords,
    HugeBody,
    BombHeader,
    Disconnect,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::EmbedMiss => "embed (new image)",
            Kind::EmbedHit => "embed (cached)",
            Kind::PredictImage => "predict (image)",
            Kind::PredictId => "predict (embedding_id)",
            Kind::Truncated => "bad: truncated image",
            Kind::WrongType => "bad: content type",
            Kind::BadJson => "bad: invalid JSON",
            Kind::NanCoords => "bad: NaN coords",
            Kind::OutsideCoords => "bad: outside coords",
            Kind::HugeBody => "bad: huge body",
            Kind::BombHeader => "bad: 30000^2 PNG",
            Kind::Disconnect => "bad: disconnect",
        }
    }

    fn pick(i: usize, malformed_pct: usize) -> Kind {
        // Deterministic, well-mixed choice from the request index.
        let mut h = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        if ((h % 100) as usize) < malformed_pct {
            const BAD: [Kind; 8] = [
                Kind::Truncated,
                Kind::WrongType,
                Kind::BadJson,
                Kind::NanCoords,
                Kind::OutsideCoords,
                Kind::HugeBody,
                Kind::BombHeader,
                Kind::Disconnect,
            ];
            BAD[((h >> 8) % BAD.len() as u64) as usize]
        } else {
            [
                Kind::EmbedMiss,
                Kind::EmbedHit,
                Kind::PredictImage,
                Kind::PredictId,
            ][((h >> 16) % 4) as usize]
        }
    }
}

/// Runs the load against `addr`. `image` is a valid image whose id `image_id` is already in the
/// server's cache; `request` a valid predict request for it; `fresh(i)` makes new images.
pub fn run(
    addr: SocketAddr,
    opts: &LoadOptions,
    image: Arc<Vec<u8>>,
    image_id: String,
    request: serde_json::Value,
    fresh: Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>,
) -> LoadReport {
    let next = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let huge = Arc::new(vec![0x42u8; opts.huge_body]);
    let bomb = Arc::new(super::png_header_only(30_000, 30_000));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // RSS sampler.
    let sampler = {
        let stop = stop.clone();
        let report = report.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (_, hwm) = rss_kib();
                let mut r = report.lock().unwrap();
                r.peak_rss_kib = r.peak_rss_kib.max(hwm);
                drop(r);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::scope(|s| {
        for _ in 0..opts.clients {
            let (next, report, huge, bomb) = (&next, &report, &huge, &bomb);
            let (image, image_id, request, fresh) = (&image, &image_id, &request, &fresh);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= opts.requests || t0.elapsed() > opts.deadline {
                    break;
                }
                let kind = Kind::pick(i, opts.malformed_pct);
                // 503 busy: back off briefly and retry (counted), as a client honouring
                // Retry-After would (shortened to keep the run bounded).
                let mut busy = 0usize;
                let (res, ms) = loop {
                    let t = Instant::now();
                    let res = send(addr, kind, i, image, image_id, request, fresh, huge, bomb);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    match &res {
                        Ok(r) if r.status == 503 && busy < 200 && t0.elapsed() < opts.deadline => {
                            if let Some(v) = check(kind, r) {
                                report.lock().unwrap().violations.push(v);
                            }
                            busy += 1;
                            std::thread::sleep(Duration::from_millis(10 + (i % 7) as u64 * 5));
                        }
                        _ => break (res, ms),
                    }
                };
                let mut r = report.lock().unwrap();
                r.sent += 1;
                r.busy_503 += busy;
                *r.statuses.entry(503).or_default() += busy;
                match (kind, res) {
                    (Kind::Disconnect, _) => {}
                    (_, Err(e)) => r
                        .violations
                        .push(format!("{}: transport error {e}", kind.name())),
                    (_, Ok(resp)) => {
                        *r.statuses.entry(resp.status).or_default() += 1;
                        if let Some(v) = check(kind, &resp) {
                            r.violations.push(v);
                        }
                        if resp.status == 503 {
                            r.busy_503 += 1;
                        } else {
                            r.latencies.entry(kind.name()).or_default().push(ms);
                        }
                    }
                }
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let mut r = Arc::try_unwrap(report).ok().unwrap().into_inner().unwrap();
    r.wall = t0.elapsed();
    let (_, hwm) = rss_kib();
    r.peak_rss_kib = r.peak_rss_kib.max(hwm);
    r
}

/// `None` when the answer is right for the kind.
fn check(kind: Kind, r: &Resp) -> Option<String> {
    let name = kind.name();
    let body = || String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned();
    if r.status == 503 {
        let ok = r.header("retry-after").is_some()
            && serde_json::from_slice::<serde_json::Value>(&r.body)
                .map(|j| j["error"]["code"].is_string())
                .unwrap_or(false);
        return (!ok).then(|| format!("{name}: 503 without Retry-After or JSON error: {}", body()));
    }
    if r.status >= 500 {
        return Some(format!("{name}: {} {}", r.status, body()));
    }
    let good = matches!(
        kind,
        Kind::EmbedMiss | Kind::EmbedHit | Kind::PredictImage | Kind::PredictId
    );
    if good {
        return (r.status != 200).then(|| format!("{name}: {} {}", r.status, body()));
    }
    if !(400..500).contains(&r.status) {
        return Some(format!("{name}: expected 4xx, got {} {}", r.status, body()));
    }
    match serde_json::from_slice::<serde_json::Value>(&r.body) {
        Ok(j)
            if j["error"]["code"].is_string()
                && j["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()) =>
        {
            None
        }
        _ => Some(format!("{name}: 4xx without a JSON error: {}", body())),
    }
}

#[allow(clippy::too_many_arguments)]
fn send(
    addr: SocketAddr,
    kind: Kind,
    i: usize,
    image: &[u8],
    image_id: &str,
    request: &serde_json::Value,
    fresh: &Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>,
    huge: &[u8],
    bomb: &[u8],
) -> std::io::Result<Resp> {
    let predict = |img: &[u8], req: &str| {
        let (ct, body) = multipart(&[
            ("image", Some("i.png"), img),
            ("request", None, req.as_bytes()),
        ]);
        client::request(addr, "POST", "/v1/predict", &[("Content-Type", &ct)], &body)
    };
    let embed = |body: &[u8], ct: &str| {
        client::request(addr, "POST", "/v1/embed", &[("Content-Type", ct)], body)
    };
    match kind {
        Kind::EmbedMiss => embed(&fresh(i), "image/png"),
        Kind::EmbedHit => embed(image, "image/png"),
        Kind::PredictImage => predict(image, &request.to_string()),
        Kind::PredictId => {
            let mut req = request.clone();
            req["embedding_id"] = image_id.into();
            client::request(
                addr,
                "POST",
                "/v1/predict",
                &[("Content-Type", "application/json")],
                req.to_string().as_bytes(),
            )
        }
        Kind::Truncated => embed(&image[..image.len() / 3], "image/png"),
        Kind::WrongType => embed(image, "text/plain"),
        Kind::BadJson => predict(image, "{\"prompts\": [{\"points\": [[1, 2]"),
        Kind::NanCoords => predict(image, "{\"prompts\": [{\"points\": [[NaN, 2]]}]}"),
        Kind::OutsideCoords => predict(image, "{\"prompts\": [{\"points\": [[99999, -5]]}]}"),
        Kind::HugeBody => embed(huge, "image/png"),
        Kind::BombHeader => embed(bomb, "image/png"),
        Kind::Disconnect => {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(addr)?;
            write!(
                s,
                "POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                image.len() * 10
            )?;
            s.write_all(image)?;
            Err(std::io::Error::other("disconnected on purpose"))
        }
    }
}
