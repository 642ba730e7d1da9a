// The click-to-caption page, built on the npm package `sca-wasm` (model work runs in its worker).
import { Sca, toCoco, rleEncode, rleDecode, maskBbox } from 'sca-wasm';

// ---- parameters ---------------------------------------------------------------------------
const params = new URLSearchParams(location.search);
const BUNDLE = new URL(params.get('bundle') || '/models/sca-shapes/', location.href).href;
const SERVER = params.get('server') || location.origin;
const MAX_NEW_TOKENS = 19; // the official evaluation default, as `sca caption`
const DRAG_PX = 5; // CSS pixels a press must move to become a box

const $ = (id) => document.getElementById(id);
const canvas = $('canvas');
const ctx = canvas.getContext('2d');
const statusEl = $('status');
const captionEl = $('caption');
const chipsEl = $('chips');
const regionsEl = $('regions');
const encoderEl = $('encoder');

// ---- state --------------------------------------------------------------------------------
let sca = null;          // the loaded model (Sca)
let loadId = 0;          // bumps on every model (re)load; stale loads are closed
let image = null;        // { bitmap, data: ImageData, name, width, height }
let imageId = 0;         // bumps on every new image
let encoded = null;      // { width, height, encodeMs } once the embedding of `image` is ready
let points = [];         // [{ x, y, label }] in original-image pixels
let box;                 // [x1, y1, x2, y2] or undefined
let masks = [];          // candidate masks of the current prompt, with their canvases
let iou = [];
let selected = -1;       // chosen candidate
let runId = 0;           // bumps on every prompt; results of older runs are ignored
let run = null;          // the running caption
let regions = [];        // [{ region (COCO-style, as toCoco wants), canvas, color }]
let anythingBusy = false;
let drag = null;         // pointer press in progress: { x0, y0, cx, cy, button, shift, moved }
let cross = null;        // keyboard crosshair in image pixels
let readyText = '';

// ---- status -------------------------------------------------------------------------------
function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}
function fail(err) {
  const msg = (err && err.message) || String(err);
  console.error(err);
  setStatus('error', `error: ${msg}`);
}

// ---- model --------------------------------------------------------------------------------
const encoderOption = (name) => (name === 'server' ? { server: SERVER } : name);

/** Loads (or reloads) the model with the named encoder; re-encodes the current image. */
async function loadModel(name) {
  const id = ++loadId;
  encoded = null;
  resetPrompt();
  if (sca) { sca.close(); sca = null; }
  $('backend').textContent = '';
  setStatus('loading', 'loading model…');
  const files = new Map(); // file -> { loaded, total } for the progress bar
  const onProgress = (e) => {
    if (id !== loadId) return;
    files.set(e.file, e);
    showProgress(e, files);
  };
  let m;
  try {
    m = await Sca.load({ bundleUrl: BUNDLE, encoder: encoderOption(name), onProgress });
  } catch (e) {
    if (id !== loadId) return; // a newer load replaced this one
    throw e;
  } finally {
    if (id === loadId) $('progress-box').hidden = true;
  }
  if (id !== loadId) { m.close(); return; } // a newer load started meanwhile
  sca = m;
  $('backend').textContent = `backend: ${sca.backendInfo}`;
  if (image) await encodeImage();
  else if (statusEl.dataset.state !== 'error') { // keep an image error visible
    setStatus('idle', `model loaded — ${sca.backendInfo}; open an image`);
  }
}

function showProgress(e, files) {
  let loaded = 0, total = 0;
  for (const f of files.values()) { loaded += f.loaded || 0; total += f.total || 0; }
  const bar = $('progress');
  $('progress-box').hidden = false;
  if (total > 0) { bar.max = total; bar.value = Math.min(loaded, total); }
  else bar.removeAttribute('value'); // indeterminate
  const mb = (n) => (n / 1e6).toFixed(1);
  const size = total > 0 ? ` ${mb(loaded)} / ${mb(total)} MB` : ` ${mb(loaded)} MB`;
  $('progress-label').textContent = `${e.phase} ${e.file || ''}${e.phase === 'download' ? size : ''}`;
}

// ---- image --------------------------------------------------------------------------------
/** Decodes a Blob/File, shows it and (when the model is loaded) encodes it. */
async function openImage(blob, name = 'image') {
  const id = ++imageId;
  let bitmap;
  try {
    // No colour management: the model decodes the same bytes as stored.
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none' });
  } catch (e) {
    throw new Error(`malformed image ${name}: the browser cannot decode it (${e.message || e})`);
  }
  if (id !== imageId) return;
  const off = new OffscreenCanvas(bitmap.width, bitmap.height);
  const octx = off.getContext('2d');
  octx.drawImage(bitmap, 0, 0);
  const data = octx.getImageData(0, 0, bitmap.width, bitmap.height);
  image = { blob, bitmap, data, name, width: bitmap.width, height: bitmap.height };
  canvas.width = image.width;
  canvas.height = image.height;
  cross = { x: image.width / 2, y: image.height / 2 };
  encoded = null;
  resetPrompt();
  clearRegions();
  draw();
  if (sca) await encodeImage();
}

async function openUrl(url) {
  const res = await fetch(url).catch((e) => { throw new Error(`image ${url}: ${e.message}`); });
  if (!res.ok) throw new Error(`image ${url}: HTTP ${res.status}`);
  const name = new URL(url, location.href).pathname.split('/').pop() || 'image';
  await openImage(await res.blob(), name);
}

async function encodeImage() {
  const id = imageId, lid = loadId;
  encoded = null;
  setStatus('busy', 'encoding image…');
  let r;
  try {
    // The encoded bytes: decoded in wasm by the native CLI's decoder, so both see one image.
    r = await sca.setImage(image.blob);
  } catch (e) {
    if (id !== imageId || lid !== loadId) return;
    throw e;
  }
  if (id !== imageId || lid !== loadId) return; // superseded
  encoded = r;
  readyText = `ready — ${sca.backendInfo}, ${r.width}×${r.height}, encoded in ${Math.round(r.encodeMs)} ms`;
  setStatus('ready', readyText);
}

// ---- prompts ------------------------------------------------------------------------------
function currentPrompt() {
  return { points: points.slice(), box, multimask: true };
}

function resetPrompt() {
  runId++;
  cancelRun();
  points = [];
  box = undefined;
  masks = [];
  iou = [];
  selected = -1;
  captionEl.textContent = '';
  renderChips();
  draw();
  resetStatus();
}

function resetStatus() {
  captionEl.classList.remove('streaming');
  if (encoded && !anythingBusy) setStatus('ready', readyText);
}

function cancelRun() {
  try { run?.cancel(); } catch { /* the model may be closing */ }
  run = null;
}

const canPrompt = () => encoded && !anythingBusy;

/** Segments and captions the current prompt; resolves with the results and timings. */
async function runPrompt() {
  if (!sca || !encoded) throw new Error('no image embedding yet: open an image and wait for "ready"');
  if (anythingBusy) throw new Error('wait for "Caption everything" to finish');
  const id = ++runId;
  cancelRun();
  try {
    return await segmentAndCaption(id);
  } catch (e) {
    if (id !== runId) return { cancelled: true }; // errors of stale runs do not matter
    throw e;
  }
}

async function segmentAndCaption(id) {
  const prompt = currentPrompt();
  const t0 = performance.now();
  setStatus('busy', 'segmenting…');
  captionEl.textContent = '';

  const seg = await sca.segment(prompt);
  if (id !== runId) return { cancelled: true };
  masks = seg.masks.map((m) => ({ ...m, canvas: maskCanvas(m, 'rgb(30, 144, 255)') }));
  iou = seg.iou;
  selected = iou.indexOf(Math.max(...iou));
  renderChips();
  draw();
  const clickToMaskMs = performance.now() - t0;

  setStatus('busy', 'captioning…');
  captionEl.classList.add('streaming');
  const r = (run = sca.caption(prompt, { maxNewTokens: MAX_NEW_TOKENS, beams: 1 }));
  let text = '';
  for await (const piece of r) {
    if (id !== runId) break;
    text += piece;
    captionEl.textContent = text;
  }
  const result = await r.done;
  if (id !== runId) return { cancelled: true };
  run = null;
  if (result.cancelled) { resetStatus(); return { cancelled: true }; }
  captionEl.classList.remove('streaming');
  captionEl.textContent = result.caption;
  const clickToCaptionMs = performance.now() - t0;
  addRegion(clickRegion(prompt, result.caption));
  setStatus('ready', `${readyText}; mask ${Math.round(clickToMaskMs)} ms, caption ${Math.round(clickToCaptionMs)} ms`);
  return { caption: result.caption, tokens: result.tokens, masks: seg.masks, iou, clickToMaskMs, clickToCaptionMs, cancelled: false };
}

function promptChanged() {
  draw(); // the new point or box at once; the mask follows
  runPrompt().catch(fail);
}

function addPoint(x, y, label) {
  if (!canPrompt()) return;
  points.push({ x: clampX(x), y: clampY(y), label });
  promptChanged();
}

const clampX = (x) => Math.min(Math.max(x, 0), image.width - 1);
const clampY = (y) => Math.min(Math.max(y, 0), image.height - 1);

// ---- canvas input -------------------------------------------------------------------------
/** Maps a pointer event to original-image pixels (the canvas is CSS-scaled). */
function toImage(e) {
  const r = canvas.getBoundingClientRect();
  return {
    x: ((e.clientX - r.left) * canvas.width) / r.width,
    y: ((e.clientY - r.top) * canvas.height) / r.height,
  };
}

canvas.addEventListener('contextmenu', (e) => e.preventDefault());
canvas.addEventListener('pointerdown', (e) => {
  if (!canPrompt() || (e.button !== 0 && e.button !== 2)) return;
  canvas.setPointerCapture(e.pointerId);
  const p = toImage(e);
  drag = { x0: p.x, y0: p.y, x1: p.x, y1: p.y, cx: e.clientX, cy: e.clientY, button: e.button, shift: e.shiftKey, moved: false };
});
canvas.addEventListener('pointermove', (e) => {
  if (!drag) return;
  const p = toImage(e);
  drag.x1 = p.x;
  drag.y1 = p.y;
  if (Math.hypot(e.clientX - drag.cx, e.clientY - drag.cy) > DRAG_PX) drag.moved = true;
  if (drag.moved) draw();
});
canvas.addEventListener('pointerup', () => {
  const d = drag;
  drag = null;
  if (!d || !canPrompt()) return;
  if (d.moved) {
    box = [clampX(Math.min(d.x0, d.x1)), clampY(Math.min(d.y0, d.y1)),
      clampX(Math.max(d.x0, d.x1)), clampY(Math.max(d.y0, d.y1))];
    promptChanged();
  } else {
    addPoint(d.x0, d.y0, d.button === 2 || d.shift ? 0 : 1);
  }
});
canvas.addEventListener('pointercancel', () => { drag = null; draw(); });

// Keyboard: arrows move a crosshair, Enter / Shift+Enter add points, Escape clears.
canvas.addEventListener('keydown', (e) => {
  if (!image) return;
  const step = Math.max(1, Math.round(Math.max(image.width, image.height) / (e.shiftKey ? 10 : 50)));
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (moves[e.key]) {
    cross.x = clampX(cross.x + moves[e.key][0]);
    cross.y = clampY(cross.y + moves[e.key][1]);
    draw();
  } else if (e.key === 'Enter') {
    addPoint(cross.x, cross.y, e.shiftKey ? 0 : 1);
  } else return;
  e.preventDefault();
});
canvas.addEventListener('focus', () => draw());
canvas.addEventListener('blur', () => draw());
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && !(e.target instanceof HTMLSelectElement)) resetPrompt();
});

// Open an image: file input, drop onto the canvas, paste.
const openFile = (file) => file && openImage(file, file.name).catch(fail);
$('file-input').addEventListener('change', (e) => openFile(e.target.files[0]));
canvas.addEventListener('dragover', (e) => { e.preventDefault(); canvas.classList.add('drop'); });
canvas.addEventListener('dragleave', () => canvas.classList.remove('drop'));
canvas.addEventListener('drop', (e) => {
  e.preventDefault();
  canvas.classList.remove('drop');
  openFile([...e.dataTransfer.files].find((f) => f.type.startsWith('image/')) || e.dataTransfer.files[0]);
});
window.addEventListener('paste', (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith('image/'));
  if (item) openFile(item.getAsFile());
});

// ---- drawing ------------------------------------------------------------------------------
/** A canvas the size of the mask, filled with `color` where the mask is 1. */
function maskCanvas(mask, color) {
  const c = new OffscreenCanvas(mask.width, mask.height);
  const g = c.getContext('2d');
  const img = g.createImageData(mask.width, mask.height);
  const px = new Uint32Array(img.data.buffer);
  for (let i = 0; i < mask.data.length; i++) if (mask.data[i]) px[i] = 0xffffffff;
  g.putImageData(img, 0, 0);
  g.globalCompositeOperation = 'source-in';
  g.fillStyle = color;
  g.fillRect(0, 0, mask.width, mask.height);
  return c;
}

function draw() {
  if (!image) return drawPlaceholder();
  const s = canvas.width / Math.max(1, canvas.getBoundingClientRect().width); // image px per CSS px
  ctx.globalAlpha = 1;
  ctx.drawImage(image.bitmap, 0, 0);
  ctx.globalAlpha = 0.45;
  for (const r of regions) ctx.drawImage(r.canvas, 0, 0, canvas.width, canvas.height);
  if (masks[selected]) {
    ctx.globalAlpha = 0.5;
    ctx.drawImage(masks[selected].canvas, 0, 0, canvas.width, canvas.height);
  }
  ctx.globalAlpha = 1;
  ctx.lineWidth = 2 * s;
  const b = drag?.moved ? [drag.x0, drag.y0, drag.x1, drag.y1] : box;
  if (b) {
    ctx.strokeStyle = '#ffd400';
    ctx.setLineDash(drag?.moved ? [6 * s, 4 * s] : []);
    ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
    ctx.setLineDash([]);
  }
  for (const p of points) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, 6 * s, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? '#19c37d' : '#ef4444';
    ctx.fill();
    ctx.strokeStyle = '#fff';
    ctx.stroke();
  }
  if (document.activeElement === canvas && cross) {
    ctx.strokeStyle = '#fff';
    ctx.beginPath();
    ctx.moveTo(cross.x - 12 * s, cross.y); ctx.lineTo(cross.x + 12 * s, cross.y);
    ctx.moveTo(cross.x, cross.y - 12 * s); ctx.lineTo(cross.x, cross.y + 12 * s);
    ctx.stroke();
  }
}

function drawPlaceholder() {
  ctx.fillStyle = '#f1f3f5';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = '#868e96';
  ctx.font = '20px system-ui, sans-serif';
  ctx.textAlign = 'center';
  ctx.fillText('Open, drop or paste an image', canvas.width / 2, canvas.height / 2);
}

// ---- candidate masks ----------------------------------------------------------------------
function renderChips() {
  chipsEl.replaceChildren(...masks.map((_, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'chip';
    b.textContent = `mask ${i + 1} · IoU ${iou[i].toFixed(2)}`;
    b.setAttribute('aria-pressed', String(i === selected));
    b.addEventListener('click', () => { selected = i; renderChips(); draw(); chipsEl.children[i].focus(); });
    return b;
  }));
}

// ---- regions ------------------------------------------------------------------------------
const colorOf = (i) => `hsl(${(i * 137.5) % 360} 75% 50%)`;

/** A COCO-style region (what anything() yields) for the selected mask of a clicked prompt. */
function clickRegion(prompt, caption) {
  const m = masks[selected];
  const first = prompt.points.find((p) => p.label === 1) || prompt.points[0];
  const point = first ? [first.x, first.y]
    : [(prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2];
  return {
    segmentation: rleEncode(m.data, m.height, m.width),
    area: m.data.reduce((a, v) => a + (v ? 1 : 0), 0),
    bbox: maskBbox(m.data, m.height, m.width),
    predicted_iou: iou[selected],
    point,
    stability_score: null, // not computed for clicked regions
    caption,
  };
}

const maskOf = (rle) => ({ height: rle.size[0], width: rle.size[1], data: rleDecode(rle) });

function addRegion(region) {
  const color = colorOf(regions.length);
  const li = document.createElement('li');
  li.style.setProperty('--swatch', color);
  const entry = { region, color, li, canvas: maskCanvas(maskOf(region.segmentation), color) };
  regions.push(entry);
  showRegionText(entry);
  regionsEl.append(li);
  draw();
  return entry;
}

function showRegionText({ region, li }) {
  const iouText = region.predicted_iou == null ? '' : ` (IoU ${region.predicted_iou.toFixed(2)})`;
  li.textContent = `${region.caption || '(captioning…)'}${iouText}`;
}

function clearRegions() {
  regions = [];
  regionsEl.replaceChildren();
}

$('clear').addEventListener('click', resetPrompt);

async function captionEverything(opts = { pointsPerSide: 16, beams: 1 }) {
  if (!sca || !encoded) throw new Error('no image embedding yet: open an image and wait for "ready"');
  if (anythingBusy) throw new Error('"Caption everything" is already running');
  anythingBusy = true;
  $('anything').disabled = true;
  const id = imageId;
  resetPrompt();
  clearRegions();
  setStatus('busy', 'captioning everything…');
  try {
    const t0 = performance.now();
    // Masks arrive first (phase 'mask'), then each region's caption (phase 'caption').
    const byIndex = new Map();
    const all = await sca.anything(opts, (region, { index, phase }) => {
      if (id !== imageId) return;
      if (phase === 'mask') byIndex.set(index, addRegion(region));
      else if (byIndex.has(index)) showRegionText(byIndex.get(index));
      setStatus('busy', `captioning everything… ${regions.length} regions`);
    });
    if (id !== imageId) return all;
    if (all.length !== regions.length) { clearRegions(); all.forEach(addRegion); }
    setStatus('ready', `${readyText}; ${all.length} regions in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return all;
  } finally {
    anythingBusy = false;
    $('anything').disabled = false;
  }
}
$('anything').addEventListener('click', () => captionEverything().catch(fail));

$('export').addEventListener('click', () => {
  if (!image) return fail(new Error('nothing to export: open an image first'));
  const json = toCoco(regions.map((r) => r.region),
    { fileName: image.name, width: image.width, height: image.height });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([JSON.stringify(json, null, 1)], { type: 'application/json' }));
  a.download = `${image.name.replace(/\.[^.]*$/, '')}.coco.json`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
});

// ---- start --------------------------------------------------------------------------------
const encParam = params.get('encoder');
encoderEl.value = ['auto', 'webgpu', 'cpu', 'server'].includes(encParam) ? encParam : 'auto';

/** Model, and the ?image= embedding when one was asked for; rejects with the first error. */
function start() {
  const img = params.get('image');
  const p = Promise.all([loadModel(encoderEl.value), img && openUrl(img)]);
  p.catch(fail);
  return p.then(() => undefined);
}
let ready = start();
ready.catch(() => {}); // shown in the status line; the promise stays rejected for tests

encoderEl.addEventListener('change', () => {
  const u = new URL(location.href);
  u.searchParams.set('encoder', encoderEl.value);
  history.replaceState(null, '', u);
  ready = loadModel(encoderEl.value);
  ready.catch(fail);
});

window.addEventListener('unhandledrejection', (e) => fail(e.reason));
const shown = (p) => p.catch((e) => { fail(e); throw e; }); // hooks show their errors too
draw();

// Hooks for tests and the benchmark.
window.scaApp = {
  get sca() { return sca; },
  get ready() { return ready; },
  get regions() { return regions.map((r) => r.region); },
  /** The prompt the canvas has built so far (original-image pixels). */
  get currentPrompt() { return currentPrompt(); },
  /** Runs segment + caption for a prompt object, as a click would. */
  async prompt(p) {
    await ready;
    points = (p.points || []).map((q) => ({ x: q.x, y: q.y, label: q.label ?? 1 }));
    box = p.box;
    return shown(runPrompt());
  },
  /** Opens an image from a URL or Blob and waits for its embedding. */
  async open(src) {
    await ready;
    return shown(typeof src === 'string' ? openUrl(src) : openImage(src));
  },
  anything: (opts) => ready.then(() => shown(captionEverything(opts))),
};

// Offline: a service worker caches the page shell (the package caches the model files).
if ('serviceWorker' in navigator && /^https?:$/.test(location.protocol)) {
  navigator.serviceWorker.register('./sw.js').catch((e) => console.warn('service worker:', e));
}
