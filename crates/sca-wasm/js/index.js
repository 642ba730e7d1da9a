// sca-wasm: Segment and Caption Anything in the browser. The model runs in a Web Worker that
// this module starts; every method here is a message to it.
import { toCoco, rleEncode, rleDecode, maskBbox } from './coco.js';

export { toCoco, rleEncode, rleDecode, maskBbox };

const isBlob = (x) => typeof Blob !== 'undefined' && x instanceof Blob;
const isImageData = (x) => typeof ImageData !== 'undefined' && x instanceof ImageData;
const isBitmap = (x) => typeof ImageBitmap !== 'undefined' && x instanceof ImageBitmap;

function bitmapToImageData(bmp) {
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  const g = c.getContext('2d');
  g.drawImage(bmp, 0, 0);
  return g.getImageData(0, 0, bmp.width, bmp.height);
}

async function imageDataToPng(img) {
  const c = new OffscreenCanvas(img.width, img.height);
  c.getContext('2d').putImageData(img, 0, 0);
  return new Uint8Array(await (await c.convertToBlob({ type: 'image/png' })).arrayBuffer());
}

/** A caption being decoded: async-iterate its text pieces; `done` resolves with the result. */
class CaptionRun {
  constructor(sca, id) {
    this._sca = sca;
    this._id = id;
    this._pieces = [];
    this._waiters = [];
    this._ended = false;
    this.masks = new Promise((resolve) => (this._masksResolve = resolve));
    this.done = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.done.catch(() => {}); // the iterator reports the error too
  }

  _push(piece) {
    const w = this._waiters.shift();
    if (w) w.resolve({ value: piece, done: false });
    else this._pieces.push(piece);
  }

  _end(result, error) {
    this._ended = true;
    this._error = error;
    this._result = result;
    for (const w of this._waiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve({ value: result, done: true });
    }
    if (error) this._reject(error);
    else this._resolve(result);
  }

  /** Stops decoding; `done` resolves with what was decoded and `cancelled: true`. */
  cancel() {
    if (!this._ended) this._sca._send('cancel', { id: this._id }).catch(() => {});
  }

  [Symbol.asyncIterator]() {
    return {
      next: () => {
        if (this._pieces.length) return Promise.resolve({ value: this._pieces.shift(), done: false });
        if (this._ended) {
          return this._error ? Promise.reject(this._error) : Promise.resolve({ value: this._result, done: true });
        }
        return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
      },
      return: () => {
        this.cancel();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

export class Sca {
  /**
   * Downloads (or reads from the Cache API) and verifies a bundle, starts the worker and picks
   * the image encoder.
   */
  static async load({ bundleUrl, encoder = 'auto', onProgress } = {}) {
    if (!bundleUrl) throw new Error('Sca.load: bundleUrl is required');
    const sca = new Sca();
    const abs = new URL(bundleUrl, globalThis.location ? globalThis.location.href : undefined).href;
    try {
      const info = await sca._send('load', { bundleUrl: abs, encoder }, (name, data) => {
        if (name === 'progress' && onProgress) onProgress(data);
      });
      sca.backend = info.backend;
      sca.backendInfo = info.backendInfo;
      sca.config = info.config;
      sca.inputSize = info.inputSize;
      return sca;
    } catch (e) {
      sca.close();
      throw e;
    }
  }

  constructor() {
    this._worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this._next = 1;
    this._pending = new Map();
    this._runs = new Map();
    this._worker.onmessage = ({ data }) => this._onMessage(data);
    this._worker.onerror = (e) => {
      const err = new Error(`sca-wasm worker failed: ${e.message || 'could not start (is worker.js served?)'}`);
      for (const p of this._pending.values()) p.reject(err);
      this._pending.clear();
    };
    this.backend = null;
    this.backendInfo = '';
    this.config = null;
  }

  _send(op, args, onEvent, transfer) {
    if (!this._worker) return Promise.reject(new Error('this Sca was closed'));
    const id = this._next++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject, onEvent });
      this._worker.postMessage({ id, op, args }, transfer || []);
    });
  }

  _onMessage({ id, ok, result, error, event, data }) {
    const p = this._pending.get(id);
    if (!p) return;
    if (event) {
      if (p.onEvent) p.onEvent(event, data);
      return;
    }
    this._pending.delete(id);
    if (ok) p.resolve(result);
    else p.reject(new Error(error));
  }

  /**
   * Sets the image and runs the encoder once: a Blob/File (decoded by the same decoder as the
   * native CLI), an ImageBitmap or ImageData. Resolves to `{width, height, encodeMs}`.
   */
  async setImage(image) {
    let args;
    if (isBlob(image)) {
      args = { bytes: new Uint8Array(await image.arrayBuffer()) };
    } else if (image instanceof Uint8Array || image instanceof ArrayBuffer) {
      args = { bytes: new Uint8Array(image).slice() }; // a copy: the caller's buffer stays usable
    } else if (isImageData(image) || isBitmap(image)) {
      const img = isBitmap(image) ? bitmapToImageData(image) : image;
      args = this.backend === 'server'
        ? { bytes: await imageDataToPng(img) }
        : { rgba: new Uint8Array(img.data.buffer.slice(0)), width: img.width, height: img.height };
    } else {
      throw new Error('setImage: give a Blob, File, ImageBitmap, ImageData or encoded image bytes');
    }
    return this._send('setImage', args, null, [(args.bytes || args.rgba).buffer]);
  }

  /** Masks and IoU for a prompt, without a caption (fast). */
  segment(prompt) {
    const t0 = performance.now();
    return this._send('segment', { prompt }).then((r) => ({ ...r, ms: performance.now() - t0 }));
  }

  /**
   * Captions a prompt: async-iterate the returned run for text pieces; `run.masks` resolves as
   * soon as the mask decoder is done, `run.done` with `{caption, tokens, masks, iou, cancelled}`.
   * A newer caption() cancels this one.
   */
  caption(prompt, { maxNewTokens = 20, beams = 1 } = {}) {
    for (const r of this._runs.values()) r.cancel();
    let run;
    let masks = null;
    const id = this._next; // the id _send gives this request
    const p = this._send('caption', { prompt, maxNewTokens, beams }, (name, data) => {
      if (name === 'masks') {
        masks = data;
        run._masksResolve(data);
      } else if (name === 'piece') run._push(data);
    });
    run = new CaptionRun(this, id);
    this._runs.set(run, run);
    p.then(
      (r) => {
        this._runs.delete(run);
        run._end({ ...r, masks: masks ? masks.masks : [], iou: masks ? masks.iou : [] });
      },
      (e) => {
        this._runs.delete(run);
        run._masksResolve(null);
        run._end(null, e);
      },
    );
    return run;
  }

  /**
   * Anything mode: masks and captions for every object. `onRegion(region, {index, phase})` is
   * called when a region's mask is final (`phase: 'mask'`, caption '') and again with its caption
   * (`phase: 'caption'`). Resolves to the regions (COCO-style records).
   */
  async anything(opts = {}, onRegion, onProgress) {
    const regions = [];
    const out = await this._send('anything', { opts }, (name, ev) => {
      if (name !== 'anything') return;
      if (ev.type === 'progress') {
        if (onProgress) onProgress(ev);
      } else if (ev.type === 'mask') {
        regions[ev.index] = ev.region;
        if (onRegion) onRegion(ev.region, { index: ev.index, phase: 'mask' });
      } else if (ev.type === 'caption') {
        const r = regions[ev.index];
        if (r) {
          r.caption = ev.caption;
          if (onRegion) onRegion(r, { index: ev.index, phase: 'caption' });
        }
      }
    });
    return out.regions;
  }

  /** Stops the worker; the object cannot be used afterwards. */
  close() {
    if (this._worker) this._worker.terminate();
    this._worker = null;
    const err = new Error('this Sca was closed');
    for (const p of this._pending.values()) p.reject(err);
    this._pending.clear();
  }
}
