// Benchmark page: encoder time, click→mask and click→caption latency, LM ms/token.
// Results go to <pre id="results"> and window.benchResults (for a headless driver).
import { Sca } from 'sca-wasm';

const q = new URLSearchParams(location.search);
const num = (k, d) => (q.has(k) ? Number(q.get(k)) : d);
const opts = {
  bundle: new URL(q.get('bundle') || '/models/sca-shapes/', location.href).href,
  encoder: q.get('encoder') || 'auto',
  image: q.get('image'),
  clicks: num('n', 10),
  warmup: num('warmup', 1),
  encodes: Math.max(1, num('encodes', 2)),
  maxNewTokens: num('tokens', 20),
  beams: num('beams', 1),
};
const out = document.getElementById('results');
const statusEl = document.getElementById('status');
const log = (line) => { out.textContent += line + '\n'; };
const status = (state, text) => { statusEl.dataset.state = state; statusEl.textContent = text; };

// Small seeded PRNG so every run clicks the same places on the same image.
function rng(seed) {
  return () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

/** Noise background with a few flat shapes; returns the image and one click point per shape. */
function syntheticImage(size) {
  const rand = rng(777);
  const c = new OffscreenCanvas(size, size);
  const g = c.getContext('2d');
  const img = g.createImageData(size, size);
  for (let i = 0; i < img.data.length; i += 4) {
    const v = 90 + rand() * 80;
    img.data[i] = v; img.data[i + 1] = v; img.data[i + 2] = v; img.data[i + 3] = 255;
  }
  g.putImageData(img, 0, 0);
  const points = [];
  for (let k = 0; k < 6; k++) {
    const r = size * (0.06 + rand() * 0.08);
    const x = r + rand() * (size - 2 * r), y = r + rand() * (size - 2 * r);
    g.fillStyle = `hsl(${Math.floor(rand() * 360)} 70% 50%)`;
    g.beginPath();
    if (k % 2) g.rect(x - r, y - r, 2 * r, 2 * r); else g.arc(x, y, r, 0, 2 * Math.PI);
    g.fill();
    points.push({ x: Math.round(x), y: Math.round(y) });
  }
  return { data: g.getImageData(0, 0, size, size), points };
}

async function loadImage(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`image ${url}: HTTP ${res.status}`);
  const bmp = await createImageBitmap(await res.blob());
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  c.getContext('2d').drawImage(bmp, 0, 0);
  const rand = rng(777);
  const points = Array.from({ length: 6 }, () => ({
    x: Math.round(bmp.width * (0.2 + 0.6 * rand())), y: Math.round(bmp.height * (0.2 + 0.6 * rand())),
  }));
  return { data: c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height), points };
}

/** One click: segment, then the full caption. */
async function click(sca, point) {
  const prompt = { points: [{ ...point, label: 1 }], box: undefined, multimask: true };
  const t0 = performance.now();
  await sca.segment(prompt);
  const maskMs = performance.now() - t0;
  const run = sca.caption(prompt, { maxNewTokens: opts.maxNewTokens, beams: opts.beams });
  let firstMs = null;
  for await (const _ of run) firstMs ??= performance.now() - t0;
  const result = await run.done;
  const captionMs = performance.now() - t0;
  const tokens = result.tokens.length;
  // Steady-state decoding speed: the time after the first piece over the remaining tokens.
  const msPerToken = tokens > 1 && firstMs != null ? (captionMs - firstMs) / (tokens - 1) : null;
  return { point, maskMs, firstPieceMs: firstMs, captionMs, tokens, msPerToken, caption: result.caption };
}

function stats(xs) {
  const v = xs.filter((x) => x != null).sort((a, b) => a - b);
  if (!v.length) return null;
  const at = (p) => v[Math.min(v.length - 1, Math.floor(p * v.length))];
  return { n: v.length, min: v[0], median: at(0.5), mean: v.reduce((a, b) => a + b, 0) / v.length, p90: at(0.9), max: v[v.length - 1] };
}

const f = (x) => (x == null ? '-' : x.toFixed(1));
const row = (name, s) => `${name.padEnd(22)}${[s?.median, s?.mean, s?.p90, s?.min, s?.max].map((x) => f(x).padStart(10)).join('')}`;

async function main() {
  const encoder = opts.encoder === 'server' ? { server: q.get('server') || location.origin } : opts.encoder;
  let t = performance.now();
  const sca = await Sca.load({ bundleUrl: opts.bundle, encoder, onProgress: (e) => status('loading', `${e.phase} ${e.file || ''}`) });
  const loadMs = performance.now() - t;
  status('busy', 'encoding…');

  const size = num('size', sca.config?.vision_config?.image_size || 1024);
  const img = opts.image ? await loadImage(opts.image) : syntheticImage(size);
  const encodes = [];
  for (let i = 0; i < opts.encodes; i++) {
    t = performance.now();
    const r = await sca.setImage(img.data);
    encodes.push({ encodeMs: r.encodeMs, wallMs: performance.now() - t });
  }

  status('busy', 'clicking…');
  const pick = (i) => img.points[i % img.points.length];
  for (let i = 0; i < opts.warmup; i++) await click(sca, pick(i));
  const clicks = [];
  for (let i = 0; i < opts.clicks; i++) clicks.push(await click(sca, pick(i)));

  const summary = {
    maskMs: stats(clicks.map((c) => c.maskMs)),
    firstPieceMs: stats(clicks.map((c) => c.firstPieceMs)),
    captionMs: stats(clicks.map((c) => c.captionMs)),
    msPerToken: stats(clicks.map((c) => c.msPerToken)),
    tokens: stats(clicks.map((c) => c.tokens)),
  };
  const results = {
    bundle: opts.bundle, encoder: opts.encoder, backend: sca.backend, backendInfo: sca.backendInfo,
    image: { source: opts.image || 'synthetic', width: img.data.width, height: img.data.height },
    loadMs, encodes, warmup: opts.warmup, maxNewTokens: opts.maxNewTokens, beams: opts.beams,
    clicks, summary, userAgent: navigator.userAgent, cores: navigator.hardwareConcurrency,
  };
  sca.close();

  log(`backend   ${results.backendInfo}`);
  log(`image     ${results.image.source} ${img.data.width}×${img.data.height}`);
  log(`load      ${f(loadMs)} ms (download/verify/init)`);
  encodes.forEach((e, i) => log(`encode #${i + 1} ${f(e.encodeMs)} ms (wall ${f(e.wallMs)} ms)${i === 0 ? ' cold' : ''}`));
  log('');
  log(`${opts.clicks} clicks (after ${opts.warmup} warm-up), maxNewTokens ${opts.maxNewTokens}, beams ${opts.beams}`);
  log(`${''.padEnd(22)}${['median', 'mean', 'p90', 'min', 'max'].map((s) => s.padStart(10)).join('')}`);
  log(row('click→mask ms', summary.maskMs));
  log(row('click→first piece ms', summary.firstPieceMs));
  log(row('click→caption ms', summary.captionMs));
  log(row('LM ms/token', summary.msPerToken));
  log(row('tokens', summary.tokens));
  log('');
  clicks.forEach((c, i) => log(`#${i + 1} (${c.point.x},${c.point.y}) mask ${f(c.maskMs)} ms, caption ${f(c.captionMs)} ms: ${c.caption}`));
  status('ready', 'done');
  window.benchResults = results;
}

main().catch((e) => {
  console.error(e);
  const msg = (e && e.message) || String(e);
  status('error', `error: ${msg}`);
  log(`error: ${msg}`);
  window.benchResults = { error: msg };
});
