//! The server end to end over loopback: every parity fixture's caption through /v1/predict,
//! the ONNX Runtime embedding against candle, errors, limits, the queue, the cache, graceful
//! shutdown, the page and the bundle files, and the README's command.
//!
//! Fixtures: `$SCA_PARITY_DIR` (default `../shared/parity` beside the repo), exported as f32
//! bundles into a temp dir. ONNX Runtime: `ORT_DYLIB_PATH` or `.cache/onnxruntime/` (written by
//! `scripts/setup-onnxruntime.sh`).

mod common;

use std::time::{Duration, Instant};

use common::client::{self, get, get_with, multipart, post, predict_image, request};
use common::load;
use common::*;
use sca_server::queue::{CancelOnDrop, Pool};
use sca_server::{wire, EncoderChoice, WebRoot};

fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mag = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (diff, mag)
}

fn expect_onnx(server: &sca_server::Server) {
    assert_eq!(
        server.encoder_name(),
        "onnxruntime-cpu",
        "the ONNX Runtime encoder is not in use; install the library with: {ORT_INSTALL}"
    );
}

#[test]
fn predict_returns_each_fixtures_caption() {
    for fixture in sca_fixtures() {
        let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
        let srv = TestServer::start(config(&bundle(&fixture, true)));
        expect_onnx(&srv.server);
        let image = std::fs::read(fixture.join("image.png")).unwrap();
        let req = fixture_request(&fixture);
        let outputs = read_json(&fixture.join("outputs.json"));
        let want: Vec<&str> = outputs["generated_text"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let multimask = req["multimask"].as_bool().unwrap();

        let r = predict_image(srv.addr, &image, &req);
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let out: sca_server::PredictResponse = serde_json::from_slice(&r.body).unwrap();
        let got: Vec<&str> = out.regions.iter().map(|r| r.caption.as_str()).collect();
        assert_eq!(got, want, "{name}: captions");
        assert_eq!(out.embedding_id, sca_core::bundle::sha256_hex(&image));
        let inputs = read_json(&fixture.join("inputs.json"));
        let hw = &inputs["original_size_hw"];
        let (h, w) = (
            hw[0].as_u64().unwrap() as usize,
            hw[1].as_u64().unwrap() as usize,
        );
        assert_eq!(out.original_size, [h, w]);
        for reg in &out.regions {
            assert_eq!(reg.masks.len(), if multimask { 3 } else { 1 }, "{name}");
            assert_eq!(reg.iou.len(), reg.masks.len());
            for m in &reg.masks {
                assert_eq!(m.size, [h, w]);
                assert_eq!(m.decode().unwrap().len(), h * w);
            }
        }

        // Again by embedding id, as JSON: same answer, from the cache.
        let mut by_id = req.clone();
        by_id["embedding_id"] = out.embedding_id.clone().into();
        let r2 = post(
            srv.addr,
            "/v1/predict",
            "application/json",
            by_id.to_string().as_bytes(),
        );
        assert_eq!(
            r2.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r2.body)
        );
        let out2: sca_server::PredictResponse = serde_json::from_slice(&r2.body).unwrap();
        let got2: Vec<&str> = out2.regions.iter().map(|r| r.caption.as_str()).collect();
        assert_eq!(got2, want, "{name}: captions by embedding_id");
        assert_eq!(out2.regions[0].masks, out.regions[0].masks);
    }
}

#[test]
fn embed_through_onnx_runtime_matches_candle() {
    for fixture in sca_fixtures() {
        let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
        let srv = TestServer::start(config(&bundle(&fixture, true)));
        expect_onnx(&srv.server);
        let image = std::fs::read(fixture.join("image.png")).unwrap();
        let rgb = sca_core::image::decode_image(&image, "fixture").unwrap();
        let want = srv.server.sca().embed(&rgb).unwrap();
        let want_v = want
            .embedding
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();

        for (query, tol) in [("?dtype=f32", 1e-4f32), ("", 2e-3)] {
            let r = post(srv.addr, &format!("/v1/embed{query}"), "image/png", &image);
            assert_eq!(
                r.status,
                200,
                "{name}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.header("content-type"), Some("application/octet-stream"));
            let e = wire::decode(&r.body).unwrap();
            assert_eq!(e.shape, want.embedding.dims(), "{name}: shape");
            assert_eq!(e.original_size(), Some(want.original_size));
            assert_eq!(e.resized_size(), Some(want.resized_size));
            assert_eq!(e.metadata["encoder"], "onnxruntime-cpu");
            assert_eq!(
                e.metadata["embedding_id"],
                sca_core::bundle::sha256_hex(&image)
            );
            let (diff, mag) = max_diff(&e.data, &want_v);
            eprintln!("{name} {query}: max |diff| {diff:.3e}, max magnitude {mag:.3e}");
            assert!(
                diff <= tol * mag,
                "{name} {query}: {diff:e} > {tol:e} x {mag:e}"
            );
            // Any safetensors reader can load it.
            let st =
                candle_core::safetensors::load_buffer(&r.body, &candle_core::Device::Cpu).unwrap();
            assert_eq!(st[wire::TENSOR].dims(), want.embedding.dims());
        }
        assert_eq!(
            post(srv.addr, "/v1/embed", "image/png", &image).header("x-sca-cache"),
            Some("hit")
        );
    }
}

#[test]
fn candle_encoder_when_onnx_is_unavailable() {
    let fixture = &sca_fixtures()[0];
    let image = std::fs::read(fixture.join("image.png")).unwrap();
    // A bundle without encoder.onnx, and a library path that does not exist.
    let mut cfgs = vec![config(&bundle(fixture, false))];
    let mut no_lib = config(&bundle(fixture, true));
    no_lib.ort_lib = Some("/nonexistent/libonnxruntime.so".into());
    cfgs.push(no_lib);
    let mut forced = config(&bundle(fixture, true));
    forced.encoder = EncoderChoice::Candle;
    cfgs.push(forced);
    for cfg in cfgs {
        let srv = TestServer::start(cfg);
        assert_eq!(srv.server.encoder_name(), "candle");
        let rgb = sca_core::image::decode_image(&image, "fixture").unwrap();
        let want = srv.server.sca().embed(&rgb).unwrap();
        let want_v = want
            .embedding
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let r = post(srv.addr, "/v1/embed?dtype=f32", "image/png", &image);
        assert_eq!(r.status, 200);
        let e = wire::decode(&r.body).unwrap();
        assert_eq!(e.metadata["encoder"], "candle");
        assert_eq!(e.data, want_v);
    }
    // --encoder onnx refuses to start without ONNX Runtime.
    let mut cfg = config(&bundle(fixture, true));
    cfg.encoder = EncoderChoice::Onnx;
    cfg.ort_lib = Some("/nonexistent/libonnxruntime.so".into());
    let err = sca_server::Server::load(cfg).err().expect("must fail");
    assert!(err.to_string().contains("setup-onnxruntime"), "{err}");
}

#[test]
fn malformed_requests_get_json_4xx() {
    let fixture = &sca_fixtures()[0];
    let mut cfg = config(&bundle(fixture, true));
    cfg.max_body_mb = 1;
    let srv = TestServer::start(cfg);
    let a = srv.addr;
    let image = std::fs::read(fixture.join("image.png")).unwrap();
    let ok_req = fixture_request(fixture);
    let pred = |req: &str| {
        let (ct, body) = multipart(&[
            ("image", Some("i.png"), &image),
            ("request", None, req.as_bytes()),
        ]);
        post(a, "/v1/predict", &ct, &body)
    };
    let check = |what: &str, r: client::Resp, status: u16, code: &str| {
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), code, "{what}");
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
    };
    check(
        "truncated image",
        post(a, "/v1/embed", "image/png", &image[..image.len() / 2]),
        400,
        "invalid_image",
    );
    check(
        "not an image",
        post(a, "/v1/embed", "image/png", b"hello"),
        415,
        "unsupported_media_type",
    );
    check(
        "empty body",
        post(a, "/v1/embed", "image/png", b""),
        400,
        "invalid_image",
    );
    check(
        "wrong content type",
        post(a, "/v1/embed", "application/json", b"{}"),
        415,
        "unsupported_media_type",
    );
    check(
        "predict as text/plain",
        post(a, "/v1/predict", "text/plain", b"x"),
        415,
        "unsupported_media_type",
    );
    check(
        "bomb header",
        post(
            a,
            "/v1/embed",
            "image/png",
            &png_header_only(30_000, 30_000),
        ),
        413,
        "image_too_large",
    );
    let big = vec![0u8; 2 * 1024 * 1024];
    check(
        "body over the limit",
        post(a, "/v1/embed", "image/png", &big),
        413,
        "body_too_large",
    );
    check(
        "invalid JSON",
        pred("{\"prompts\": [oops"),
        400,
        "invalid_json",
    );
    check(
        "NaN in JSON",
        pred("{\"prompts\": [{\"points\": [[NaN, 1]]}]}"),
        400,
        "invalid_json",
    );
    check(
        "unknown field",
        pred("{\"prompts\": [{\"points\": [[1, 1]]}], \"bogus\": 1}"),
        400,
        "invalid_json",
    );
    check(
        "point outside",
        pred("{\"prompts\": [{\"points\": [[1000, 5]]}]}"),
        422,
        "invalid_prompt",
    );
    check(
        "negative point",
        pred("{\"prompts\": [{\"points\": [[-1, 5]]}]}"),
        422,
        "invalid_prompt",
    );
    check(
        "bad label",
        pred("{\"prompts\": [{\"points\": [[10, 5, 2]]}]}"),
        422,
        "invalid_prompt",
    );
    check(
        "inverted box",
        pred("{\"prompts\": [{\"box\": [50, 50, 10, 10]}]}"),
        422,
        "invalid_prompt",
    );
    check(
        "no prompts",
        pred("{\"prompts\": []}"),
        422,
        "invalid_prompt",
    );
    check(
        "empty prompt",
        pred("{\"prompts\": [{}]}"),
        422,
        "invalid_prompt",
    );
    check(
        "zero beams",
        pred("{\"prompts\": [{\"points\": [[10, 5]]}], \"beams\": 0}"),
        422,
        "invalid_prompt",
    );
    check(
        "too many tokens",
        pred("{\"prompts\": [{\"points\": [[10, 5]]}], \"max_new_tokens\": 100000}"),
        422,
        "invalid_prompt",
    );
    check(
        "unknown embedding",
        post(
            a,
            "/v1/predict",
            "application/json",
            b"{\"embedding_id\": \"00\", \"prompts\": [{\"points\": [[10, 5]]}]}",
        ),
        404,
        "unknown_embedding",
    );
    let req_s = ok_req.to_string();
    let (ct, body) = multipart(&[
        ("image", Some("i.png"), &image),
        ("embedding_id", None, b"abc"),
        ("request", None, req_s.as_bytes()),
    ]);
    check(
        "image and id",
        post(a, "/v1/predict", &ct, &body),
        400,
        "ambiguous_input",
    );
    let (ct, body) = multipart(&[("request", None, req_s.as_bytes())]);
    check(
        "neither image nor id",
        post(a, "/v1/predict", &ct, &body),
        400,
        "missing_image",
    );
    let (ct, body) = multipart(&[("image", Some("i.png"), &image)]);
    check(
        "no request field",
        post(a, "/v1/predict", &ct, &body),
        400,
        "missing_request",
    );
    check(
        "broken multipart",
        post(
            a,
            "/v1/predict",
            "multipart/form-data; boundary=zzz",
            b"garbage",
        ),
        400,
        "invalid_multipart",
    );
    check(
        "unknown query",
        post(a, "/v1/embed?format=png", "image/png", &image),
        400,
        "invalid_query",
    );
    check(
        "GET on a POST route",
        get(a, "/v1/embed"),
        405,
        "method_not_allowed",
    );
    check(
        "unknown API route",
        post(a, "/v1/nothing", "application/json", b"{}"),
        404,
        "not_found",
    );
    check("unknown page", get(a, "/nothing.html"), 404, "not_found");

    // A client that goes away mid-upload leaves nothing behind.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(a).unwrap();
        write!(
            s,
            "POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 500000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&image).unwrap();
    }
    // Still serving, nothing queued.
    let r = post(a, "/v1/embed", "image/png", &image);
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.server.queue().depth() != 0 {
        assert!(Instant::now() < deadline, "work left in the queue");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn full_queue_answers_503_and_slow_requests_time_out() {
    let fixture = &sca_fixtures()[0];
    let mut cfg = config(&bundle(fixture, true));
    cfg.queue_size = 2;
    cfg.timeout_secs = 1.0;
    cfg.retry_after_secs = 3;
    let srv = TestServer::start(cfg);
    let a = srv.addr;
    let q = srv.server.queue().clone();
    let image = std::fs::read(fixture.join("image.png")).unwrap();

    // Hold the only encoder worker with a job that waits for us.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let ticket = q.admit().unwrap();
    let blocker = {
        let q = q.clone();
        srv.rt_handle.spawn(async move {
            let cancel = CancelOnDrop::new();
            q.run(Pool::Encoder, &ticket, &cancel, move |_| {
                let _ = release_rx.recv();
                Ok(())
            })
            .await
        })
    };
    while q.running(Pool::Encoder) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // One more request fits the queue; it waits for the encoder and times out after 1 s.
    let t0 = Instant::now();
    let r = post(a, "/v1/embed", "image/png", &image);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "timeout");
    assert_eq!(r.header("retry-after"), Some("3"));
    assert!(t0.elapsed() >= Duration::from_millis(900));
    // Its place was given back when it timed out: fill the queue and get "busy" at once.
    let _second = q.admit().unwrap();
    let t0 = Instant::now();
    let r = post(a, "/v1/embed", "image/png", &png_image(20, 20, 1));
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "busy");
    assert_eq!(r.header("retry-after"), Some("3"));
    assert!(t0.elapsed() < Duration::from_millis(900));
    let r = predict_image(a, &image, &fixture_request(fixture));
    assert_eq!((r.status, r.error_code().as_str()), (503, "busy"));
    // Cache hits and light routes need no queue place.
    assert_eq!(get(a, "/healthz").status, 200);
    drop(_second);
    release_tx.send(()).unwrap();
    srv.rt_handle.block_on(blocker).unwrap().unwrap();
    let r = post(a, "/v1/embed", "image/png", &image);
    assert_eq!(r.status, 200);
    let m = String::from_utf8(get(a, "/metrics").body).unwrap();
    assert!(m.contains("sca_rejected_total 2"), "{m}");
    assert!(m.contains("sca_timeouts_total 1"), "{m}");
    assert!(
        m.contains("sca_requests_total{route=\"/v1/embed\",status=\"503\"} 2"),
        "{m}"
    );
    assert_eq!(q.depth(), 0);

    // Concurrent clients on a queue of 2: every answer is 200 or 503 busy, never anything else.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..12)
            .map(|i| {
                s.spawn(move || {
                    let img = png_image(64, 48, 100 + i);
                    let r = post(a, "/v1/embed", "image/png", &img);
                    if r.status == 503 {
                        assert_eq!(r.error_code(), "busy");
                        assert_eq!(r.header("retry-after"), Some("3"));
                    }
                    r.status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn embedding_cache_hits_by_image_sha256() {
    let fixture = &sca_fixtures()[0];
    let srv = TestServer::start(config(&bundle(fixture, true)));
    let a = srv.addr;
    let image = std::fs::read(fixture.join("image.png")).unwrap();
    let r1 = post(a, "/v1/embed", "image/png", &image);
    assert_eq!(r1.header("x-sca-cache"), Some("miss"));
    let r2 = post(a, "/v1/embed", "application/octet-stream", &image);
    assert_eq!(r2.header("x-sca-cache"), Some("hit"));
    assert_eq!(r1.body, r2.body);
    let id = r1.header("x-sca-embedding-id").unwrap().to_string();
    assert_eq!(id, sca_core::bundle::sha256_hex(&image));
    // Multipart upload of the same bytes: same id, cache hit; predict by id: hit.
    let (ct, body) = multipart(&[("image", Some("i.png"), &image)]);
    let r3 = post(a, "/v1/embed", &ct, &body);
    assert_eq!(r3.header("x-sca-cache"), Some("hit"));
    let mut req = fixture_request(fixture);
    req["embedding_id"] = id.into();
    let r4 = post(
        a,
        "/v1/predict",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(r4.status, 200);
    let m = String::from_utf8(get(a, "/metrics").body).unwrap();
    assert!(m.contains("sca_cache_hits_total 3"), "{m}");
    assert!(m.contains("sca_cache_misses_total 1"), "{m}");
    assert!(m.contains("sca_cache_entries 1"), "{m}");

    // A tiny cache (1 MiB) evicts the least recently used embedding.
    let mut cfg = config(&bundle(fixture, true));
    cfg.cache_mb = 0;
    let srv0 = TestServer::start(cfg);
    assert_eq!(
        post(srv0.addr, "/v1/embed", "image/png", &image).header("x-sca-cache"),
        Some("miss")
    );
    assert_eq!(
        post(srv0.addr, "/v1/embed", "image/png", &image).header("x-sca-cache"),
        Some("miss")
    );
}

#[test]
fn graceful_shutdown_finishes_in_flight_work() {
    let fixture = &sca_fixtures()[0];
    let mut srv = TestServer::start(config(&bundle(fixture, true)));
    let a = srv.addr;
    let q = srv.server.queue().clone();
    let image = std::fs::read(fixture.join("image.png")).unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let ticket = q.admit().unwrap();
    let blocker = {
        let q = q.clone();
        srv.rt_handle.spawn(async move {
            let cancel = CancelOnDrop::new();
            q.run(Pool::Encoder, &ticket, &cancel, move |_| {
                let _ = release_rx.recv();
                Ok(())
            })
            .await
        })
    };
    while q.running(Pool::Encoder) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // A predict request is now waiting for the encoder.
    let req = fixture_request(fixture);
    let in_flight = std::thread::spawn(move || predict_image(a, &image, &req));
    while q.depth() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    srv.begin_shutdown();
    // New connections are refused once the server stops accepting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(a).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }
    release_tx.send(()).unwrap();
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out: sca_server::PredictResponse = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(out.regions.len(), 1);
    srv.rt_handle.block_on(blocker).unwrap().unwrap();
    srv.join();
    assert_eq!(q.depth(), 0);
}

#[test]
fn page_bundle_files_health_and_metrics() {
    let fixture = &sca_fixtures()[0];
    let dir = bundle(fixture, true);
    let srv = TestServer::start(config(&dir));
    let a = srv.addr;
    assert_eq!(srv.server.web_root(), &WebRoot::Builtin);
    let r = get(a, "/");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let page = String::from_utf8(r.body).unwrap();
    assert!(
        page.contains("/v1/predict") && page.contains("<canvas"),
        "{page}"
    );

    let name = srv.server.model_name().to_string();
    let models = get(a, "/models").json();
    assert_eq!(models["models"][0]["name"], name.as_str());
    let manifest: sca_core::bundle::Manifest =
        serde_json::from_slice(&get(a, &format!("/models/{name}/manifest.json")).body).unwrap();
    for (file, entry) in &manifest.files {
        let r = get(a, &format!("/models/{name}/{file}"));
        assert_eq!(r.status, 200, "{file}");
        assert_eq!(r.body, std::fs::read(dir.join(file)).unwrap(), "{file}");
        assert_eq!(
            r.header("etag"),
            Some(format!("\"{}\"", entry.sha256).as_str())
        );
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        let etag = format!("\"{}\"", entry.sha256);
        let r = get_with(
            a,
            &format!("/models/{name}/{file}"),
            &[("If-None-Match", &etag)],
        );
        assert_eq!(r.status, 304, "{file}");
        assert!(r.body.is_empty());
    }
    let m = get(a, &format!("/models/{name}/manifest.json"));
    assert_eq!(m.header("cache-control"), Some("no-cache"));
    assert!(m.header("etag").is_some());
    for bad in [
        format!("/models/{name}/config.json"),
        format!("/models/{name}/../{name}/manifest.json"),
        "/models/other/manifest.json".to_string(),
    ] {
        let r = get(a, &bad);
        assert_eq!(r.status, 404, "{bad}");
        assert_eq!(r.error_code(), "not_found");
    }

    let h = get(a, "/healthz").json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["encoder"], srv.server.encoder_name());
    let m = get(a, "/metrics");
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(m.body).unwrap();
    for needle in [
        "sca_requests_total{route=\"/healthz\",status=\"200\"} 1",
        "sca_request_duration_seconds_bucket{route=\"/models\",le=\"+Inf\"}",
        "sca_queue_depth 0",
        "sca_cache_hits_total 0",
        "sca_info{model=",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    // A web directory is served instead of the built-in page, without escaping it.
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<p>hello</p>").unwrap();
    std::fs::create_dir(web.path().join("pkg")).unwrap();
    std::fs::write(web.path().join("pkg/a.wasm"), b"\0asm").unwrap();
    let mut cfg = config(&dir);
    cfg.web = Some(web.path().to_path_buf());
    let srv2 = TestServer::start(cfg);
    let r = get(srv2.addr, "/");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"<p>hello</p>".as_slice())
    );
    let r = get(srv2.addr, "/pkg/a.wasm");
    assert_eq!(r.header("content-type"), Some("application/wasm"));
    assert_eq!(
        r.header("cross-origin-embedder-policy"),
        Some("require-corp")
    );
    for bad in ["/../Cargo.toml", "/pkg/%2e%2e/x", "/.hidden"] {
        assert_eq!(get(srv2.addr, bad).status, 404, "{bad}");
    }
}

/// The README's first command is `bash scripts/serve.sh`: run it (with the binary this test
/// build made and a fixture bundle, as the bundled model may not exist yet; SCA_MODEL picks
/// it), wait for the printed URL, fetch the page and one prediction.
#[test]
fn readme_command_serves_the_page_and_a_prediction() {
    use std::os::unix::process::CommandExt;
    let fixture = &sca_fixtures()[1.min(sca_fixtures().len() - 1)];
    let model = std::env::var_os("SCA_README_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bundle(fixture, true));
    let mut child = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/serve.sh"))
        .args(["--addr", "127.0.0.1:0"])
        .current_dir(repo_root())
        .env("SCA_BIN", env!("CARGO_BIN_EXE_sca-server"))
        .env("SCA_MODEL", &model)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        // Its own process group, so a timeout stops the cargo build it may be running too.
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("serve.sh: {line}");
            if let Some(i) = line.find("http://") {
                let _ = tx.send(line[i..].trim().to_string());
            }
        }
    });
    // On a fresh checkout serve.sh first builds the wasm package (release, wasm32): minutes on
    // two busy cores. The limit only bounds a hang.
    let limit = Duration::from_secs(1200);
    let url = match rx.recv_timeout(limit) {
        Ok(u) => u,
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("scripts/serve.sh printed no URL within {limit:?}");
        }
    };
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
    let image = std::fs::read(fixture.join("image.png")).unwrap();
    let r = predict_image(addr, &image, &fixture_request(fixture));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out: sca_server::PredictResponse = serde_json::from_slice(&r.body).unwrap();
    assert!(!out.regions.is_empty());
    // SIGTERM: graceful shutdown, exit status 0.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "server exited with {status}");
    let _ = request;
}

/// A small run of the load test (the full one is `cargo run --release -p sca-server --example
/// loadtest`): concurrent clients, embed and predict mixed with 10% malformed requests; no 5xx
/// but deliberate 503s, a JSON 4xx for every malformed request, nothing left in the queue.
#[test]
fn load_mix_with_malformed_requests() {
    let fixture = &sca_fixtures()[0];
    let mut cfg = config(&bundle(fixture, true));
    cfg.max_body_mb = 2;
    cfg.queue_size = 8;
    let srv = TestServer::start(cfg);
    let image = std::fs::read(fixture.join("image.png")).unwrap();
    let warm = post(srv.addr, "/v1/embed", "image/png", &image);
    assert_eq!(warm.status, 200);
    let id = warm.header("x-sca-embedding-id").unwrap().to_string();
    let opts = load::LoadOptions {
        clients: 12,
        requests: 240,
        malformed_pct: 10,
        deadline: Duration::from_secs(90),
        huge_body: 4 * 1024 * 1024,
    };
    let mut report = load::run(
        srv.addr,
        &opts,
        std::sync::Arc::new(image),
        id,
        fixture_request(fixture),
        std::sync::Arc::new(|i| png_image(40 + (i % 50) as u32, 30, i as u32)),
    );
    eprintln!("{}", report.table());
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.sent, opts.requests);
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.server.queue().depth() != 0 {
        assert!(Instant::now() < deadline, "work left in the queue");
        std::thread::sleep(Duration::from_millis(20));
    }
}
