//! Test helpers: fixture bundles exported into a temp dir, an in-process server, and a small
//! blocking HTTP/1.1 client (loopback only).
#![allow(dead_code)]

pub mod client;
pub mod load;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sca_server::{Server, ServerConfig};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/parity"))
}

/// The SCA fixture directories (those with inputs.json, config.json and image.png).
pub fn sca_fixtures() -> Vec<PathBuf> {
    let root = parity_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "parity fixtures missing at {} ({e}); set SCA_PARITY_DIR",
                root.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.join("inputs.json").is_file()
                && p.join("config.json").is_file()
                && p.join("image.png").is_file()
        })
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no SCA fixtures in {}", root.display());
    dirs
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// An f32 bundle (decoder f32, encoder f32, with or without encoder.onnx) exported from
/// `fixture`, once per test process.
pub fn bundle(fixture: &Path, onnx: bool) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static DONE: OnceLock<Mutex<HashMap<(PathBuf, bool), PathBuf>>> = OnceLock::new();
    let root = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let mut done = DONE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.get(&(fixture.to_path_buf(), onnx)) {
        return p.clone();
    }
    let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
    let out = root.join(format!("{name}{}", if onnx { "" } else { "-no-onnx" }));
    let opts = sca_export::bundle::BundleOptions {
        quant: sca_core::bundle::Quant::F32,
        encoder_f16: false,
        onnx,
        force: true,
    };
    sca_export::bundle::export_bundle(fixture, &out, &opts)
        .unwrap_or_else(|e| panic!("exporting {}: {e}", fixture.display()));
    done.insert((fixture.to_path_buf(), onnx), out.clone());
    out
}

pub const ORT_INSTALL: &str =
    "bash scripts/setup-onnxruntime.sh   (or set ORT_DYLIB_PATH to libonnxruntime.so.1.32.0)";

/// A config for `model` with the test defaults.
pub fn config(model: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(model);
    cfg.addr = "127.0.0.1:0".into();
    cfg
}

/// A server running on its own runtime in a background thread; shut down (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub rt_handle: tokio::runtime::Handle,
}

impl TestServer {
    pub fn start(cfg: ServerConfig) -> Self {
        sca_server::init_logging();
        let server = Server::load(cfg).unwrap_or_else(|e| panic!("starting the server: {e}"));
        Self::start_loaded(server)
    }

    pub fn start_loaded(server: Server) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s2 = server.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let handle = rt.handle().clone();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send((listener.local_addr().unwrap(), handle)).unwrap();
                s2.serve(listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let (addr, rt_handle) = rx.recv().unwrap();
        Self {
            addr,
            server,
            shutdown: Some(stop_tx),
            thread: Some(thread),
            rt_handle,
        }
    }

    /// Starts the graceful shutdown (the server stops accepting, finishes what is in flight).
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }

    /// Waits for the serving thread to end.
    pub fn join(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            if !std::thread::panicking() {
                let _ = t.join();
            }
        }
    }
}

/// The request JSON for a fixture's regions.
pub fn fixture_request(fixture: &Path) -> serde_json::Value {
    let inputs = read_json(&fixture.join("inputs.json"));
    let prompts: Vec<serde_json::Value> = inputs["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut p = serde_json::Map::new();
            if let Some(pts) = r["points"].as_array() {
                let labels = r["labels"].as_array().unwrap();
                let pts: Vec<serde_json::Value> = pts
                    .iter()
                    .zip(labels)
                    .map(|(xy, l)| serde_json::json!([xy[0], xy[1], l]))
                    .collect();
                p.insert("points".into(), pts.into());
            }
            if let Some(b) = r.get("box") {
                p.insert("box".into(), b.clone());
            }
            serde_json::Value::Object(p)
        })
        .collect();
    serde_json::json!({
        "prompts": prompts,
        "multimask": inputs["multimask_output"].as_bool().unwrap_or(false),
        "max_new_tokens": inputs["max_new_tokens"].as_u64().unwrap(),
    })
}

/// A PNG whose header claims `w` x `h` pixels and that holds no pixel data.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG of `w` x `h` with a little structure (so images differ by `seed`).
pub fn png_image(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 3 + seed * 17) % 256) as u8,
            ((y * 5 + seed * 31) % 256) as u8,
            (((x + y) * 7 + seed) % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}
