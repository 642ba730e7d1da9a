//! Prometheus text exposition (format 0.0.4) of request counts, latencies, queue depth,
//! worker use and embedding-cache hits; written by hand (no registry crate needed).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (c, b) in self.counts.iter_mut().zip(BUCKETS) {
            if secs <= b {
                *c += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Counters and histograms updated by the handlers.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    jobs: Mutex<BTreeMap<&'static str, Histogram>>,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub timeouts: AtomicU64,
}

/// Values read at scrape time.
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub encoder_running: usize,
    pub predict_running: usize,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub encoder: String,
    pub model: String,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records one answered request of `route` (a fixed label, e.g. `/v1/embed`).
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, status))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Records the run time of one job (`encode`, `predict`).
    pub fn job(&self, kind: &'static str, elapsed: Duration) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP sca_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE sca_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "sca_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP sca_request_duration_seconds Time to answer a request, by route.\n");
        out.push_str("# TYPE sca_request_duration_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.render(
                &mut out,
                "sca_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str(
            "# HELP sca_job_duration_seconds Run time of encoder and prompt-decoding jobs.\n",
        );
        out.push_str("# TYPE sca_job_duration_seconds histogram\n");
        for (kind, h) in self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h.render(
                &mut out,
                "sca_job_duration_seconds",
                &format!("kind=\"{kind}\""),
            );
        }
        let counters = [
            (
                "sca_cache_hits_total",
                "Embedding cache hits.",
                self.cache_hits.load(Ordering::Relaxed),
            ),
            (
                "sca_cache_misses_total",
                "Embedding cache misses (the encoder ran).",
                self.cache_misses.load(Ordering::Relaxed),
            ),
            (
                "sca_rejected_total",
                "Requests refused with 503 because the work queue was full.",
                self.rejected_busy.load(Ordering::Relaxed),
            ),
            (
                "sca_timeouts_total",
                "Requests that ran past the per-request time limit.",
                self.timeouts.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "sca_queue_depth",
                "Requests admitted to the work queue (waiting or running).",
                g.queue_depth,
            ),
            (
                "sca_queue_capacity",
                "Most requests the work queue admits.",
                g.queue_capacity,
            ),
            (
                "sca_encoder_running",
                "Encoder jobs running now.",
                g.encoder_running,
            ),
            (
                "sca_predict_running",
                "Prompt-decoding jobs running now.",
                g.predict_running,
            ),
            (
                "sca_cache_entries",
                "Embeddings in the cache.",
                g.cache_entries,
            ),
            (
                "sca_cache_bytes",
                "Bytes of embeddings in the cache.",
                g.cache_bytes,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP sca_info The served model and the encoder in use.\n# TYPE sca_info gauge\nsca_info{{model=\"{}\",encoder=\"{}\",version=\"{}\"}} 1",
            esc(&g.model),
            esc(&g.encoder),
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}
