// The Web Worker of `sca-wasm`: downloads and verifies the bundle, holds the wasm session, runs
// the image encoder (WebGPU, CPU or a server) and decodes captions one token per event-loop turn
// so that a newer request can cancel a running caption.
import init, { ScaSession, GpuEncoder } from './sca_wasm.js';

const CACHE = 'sca-wasm-models-v1';
const NEEDED = ['encoder.safetensors', 'decoder.gguf', 'tokenizer.json'];

let session = null;
let gpu = null; // GpuEncoder when the WebGPU encoder is in use
let backend = null;
let server = null;
let job = null; // the running caption: { id, cancelled }
let ready = init();

const post = (msg, transfer) => self.postMessage(msg, transfer || []);
const event = (id, name, data, transfer) => post({ id, event: name, data }, transfer);

// Lets queued messages (a new click, a cancel) run between two tokens.
const yieldNow = () =>
  new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => resolve();
    ch.port2.postMessage(0);
  });

const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('');
const sha256 = async (bytes) => hex(await crypto.subtle.digest('SHA-256', bytes));

async function fetchOk(url, what, init) {
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    throw new Error(`cannot fetch ${what} (${url}): ${e.message}`);
  }
  if (!res.ok) throw new Error(`cannot fetch ${what} (${url}): HTTP ${res.status} ${res.statusText}`.trim());
  return res;
}

// Reads a response body with progress events.
async function readBody(id, res, file, total) {
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    event(id, 'progress', { phase: 'download', file, loaded, total });
  }
  const out = new Uint8Array(loaded);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

// One bundle file: from the Cache API when its sha256 still matches, else from the network.
async function bundleFile(id, base, name, entry, cache) {
  const url = new URL(name, base).href;
  if (cache) {
    const hit = await cache.match(url);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      event(id, 'progress', { phase: 'verify', file: name, loaded: bytes.length, total: entry.bytes });
      if ((await sha256(bytes)) === entry.sha256) return bytes;
      await cache.delete(url); // stale or corrupted: fetch again
    }
  }
  const res = await fetchOk(url, `bundle file ${name}`);
  const bytes = await readBody(id, res, name, entry.bytes);
  event(id, 'progress', { phase: 'verify', file: name, loaded: bytes.length, total: entry.bytes });
  if (bytes.length !== entry.bytes) {
    throw new Error(`bundle file ${name}: ${bytes.length} bytes, the manifest says ${entry.bytes} (truncated download?)`);
  }
  const sum = await sha256(bytes);
  if (sum !== entry.sha256) {
    throw new Error(`checksum mismatch: bundle file ${name} has sha256 ${sum}, the manifest says ${entry.sha256}`);
  }
  if (cache) {
    await cache.put(url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }));
  }
  return bytes;
}

async function openCache() {
  try {
    return typeof caches === 'undefined' ? null : await caches.open(CACHE);
  } catch {
    return null; // e.g. an opaque origin: no cache, downloads every time
  }
}

async function load(id, { bundleUrl, encoder }) {
  await ready;
  const base = new URL(bundleUrl.endsWith('/') ? bundleUrl : bundleUrl + '/', self.location.href);
  const cache = await openCache();
  const manifestUrl = new URL('manifest.json', base).href;
  let manifestBytes;
  try {
    const res = await fetchOk(manifestUrl, 'the bundle manifest', { cache: 'no-cache' });
    manifestBytes = new Uint8Array(await res.arrayBuffer());
    if (cache) await cache.put(manifestUrl, new Response(manifestBytes));
  } catch (e) {
    const hit = cache && (await cache.match(manifestUrl)); // offline: the cached bundle
    if (!hit) throw e;
    manifestBytes = new Uint8Array(await hit.arrayBuffer());
  }
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  } catch (e) {
    throw new Error(`bundle manifest ${manifestUrl} is not JSON: ${e.message}`);
  }
  if (!manifest || typeof manifest.files !== 'object') {
    throw new Error(`bundle manifest ${manifestUrl} has no "files" (is this an sca bundle?)`);
  }
  const names = [];
  const files = [];
  for (const name of NEEDED) {
    const entry = manifest.files[name];
    if (!entry) throw new Error(`bundle manifest ${manifestUrl} lists no ${name}`);
    names.push(name);
    files.push(await bundleFile(id, base, name, entry, cache));
  }
  event(id, 'progress', { phase: 'init', file: '', loaded: 0, total: 0 });
  session = new ScaSession(manifestBytes, names, files);
  const config = JSON.parse(session.configJson());
  gpu = null;
  server = null;
  let info;
  if (encoder && typeof encoder === 'object' && encoder.server) {
    backend = 'server';
    server = String(encoder.server).replace(/\/$/, '');
    info = `server (${server}/v1/embed)`;
  } else if (encoder === 'webgpu' || encoder === 'auto' || encoder === undefined) {
    const adapter = self.navigator.gpu ? await self.navigator.gpu.requestAdapter() : null;
    if (adapter) {
      gpu = await GpuEncoder.create(session.configJson(), files[0]);
      backend = 'webgpu';
      info = gpu.adapterInfo(); // e.g. "webgpu (SwiftShader, fallback)"
    } else if (encoder === 'webgpu') {
      throw new Error('no WebGPU adapter in this browser (choose encoder "cpu" or "auto")');
    } else {
      backend = 'cpu';
      info = 'cpu (wasm simd128; no WebGPU adapter)';
    }
  } else if (encoder === 'cpu') {
    backend = 'cpu';
    info = 'cpu (wasm simd128)';
  } else {
    throw new Error(`unknown encoder ${JSON.stringify(encoder)} (auto, webgpu, cpu or {server: URL})`);
  }
  return { backend, backendInfo: info, config, inputSize: session.inputSize() };
}

function needSession() {
  if (!session) throw new Error('the model is not loaded');
}

// args: { bytes: Uint8Array } (an encoded image) or { rgba, width, height } (ImageData pixels).
async function setImage(id, args) {
  needSession();
  job = null;
  const t0 = performance.now();
  let width;
  let height;
  if (backend === 'server') {
    if (!args.bytes) throw new Error('setImage: the server encoder needs encoded image bytes');
    const res = await fetchOk(`${server}/v1/embed?dtype=f32`, 'the server embedding', {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: args.bytes,
    }).catch(async (e) => {
      throw new Error(`server encoder: ${e.message}`);
    });
    const [h, w] = session.setEmbeddingSafetensors(new Uint8Array(await res.arrayBuffer()));
    [height, width] = [h, w];
  } else if (backend === 'webgpu') {
    const pre = args.bytes
      ? session.preprocessBytes(args.bytes)
      : { pixels: session.preprocessRgba(args.rgba, args.width, args.height), width: args.width, height: args.height };
    const emb = await gpu.embed(pre.pixels);
    session.setEmbedding(emb, pre.height, pre.width);
    [width, height] = [pre.width, pre.height];
  } else if (args.bytes) {
    [height, width] = session.setImageBytes(args.bytes);
  } else {
    session.setImageRgba(args.rgba, args.width, args.height);
    [width, height] = [args.width, args.height];
  }
  return { width, height, encodeMs: performance.now() - t0 };
}

function masksOut(r) {
  return { masks: r.masks, iou: Array.from(r.iou), box: Array.from(r.box) };
}

const transferOf = (r) => r.masks.map((m) => m.data.buffer);

async function caption(id, { prompt, maxNewTokens = 20, beams = 1 }) {
  needSession();
  const me = { id, cancelled: false };
  job = me;
  if (beams > 1) {
    const r = session.caption(prompt, beams, maxNewTokens);
    event(id, 'masks', masksOut(r));
    if (r.caption) event(id, 'piece', r.caption);
    return { caption: r.caption, tokens: Array.from(r.tokens), cancelled: false };
  }
  const r = session.captionBegin(prompt, maxNewTokens);
  event(id, 'masks', masksOut(r), transferOf(r));
  let text = '';
  for (;;) {
    await yieldNow();
    if (job !== me) {
      // A newer caption or image took the session: this one is over.
      return { caption: text, tokens: null, cancelled: true };
    }
    if (me.cancelled) break;
    const piece = session.captionNext();
    if (piece === undefined) break;
    if (piece) {
      text += piece;
      event(id, 'piece', piece);
    }
  }
  job = null;
  const f = session.captionFinish();
  if (f.lastPiece && !me.cancelled) event(id, 'piece', f.lastPiece);
  return { caption: me.cancelled ? text : f.caption, tokens: Array.from(f.tokens), cancelled: me.cancelled };
}

function anything(id, { opts }) {
  needSession();
  job = null;
  const out = session.anything(opts || {}, (ev) => {
    event(id, 'anything', ev);
    return true;
  });
  return out;
}

const ops = {
  load,
  setImage,
  caption,
  anything,
  segment: (id, { prompt }) => {
    needSession();
    const r = session.segment(prompt);
    return masksOut(r);
  },
  cancel: (_, { id }) => {
    if (job && job.id === id) job.cancelled = true;
    return null;
  },
};

self.onmessage = async ({ data }) => {
  const { id, op, args } = data;
  try {
    const f = ops[op];
    if (!f) throw new Error(`unknown operation ${op}`);
    const result = await f(id, args || {});
    post({ id, ok: true, result }, result && result.masks ? transferOf(result) : []);
  } catch (e) {
    post({ id, ok: false, error: e && e.message ? e.message : String(e) });
  }
};
