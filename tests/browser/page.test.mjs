// The click-to-caption page (web/dist, built on the npm package) in headless Chromium, against
// the native CLI on the bundled model. Run by scripts/test-browser.sh (which builds the page and
// the native binary first); screenshots go to target/browser-tests/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { ROOT, MODEL, serve, launch, screenshot, settled, nativeCaption, maskIou } from './harness.mjs';
import { rleDecode } from '../../crates/sca-wasm/js/coco.js';

const DIST = path.join(ROOT, 'web/dist');
const IMAGE = path.join(MODEL, 'examples/shapes-777-0.png');
// A known object of that image (its ground-truth box is 148,114,225,191): click its centre.
const OBJECT = { x: 186, y: 152 };

let site;
let tmp;

before(async () => {
  if (!fs.existsSync(path.join(DIST, 'node_modules/sca-wasm/sca_wasm_bg.wasm'))) {
    throw new Error('web/dist is not built: run bash scripts/build-web.sh');
  }
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sca-browser-'));
  // Same bundle with one byte of decoder.gguf changed (size kept): a checksum mismatch.
  const corrupt = path.join(tmp, 'corrupt');
  fs.cpSync(MODEL, corrupt, { recursive: true });
  const gguf = path.join(corrupt, 'decoder.gguf');
  const bytes = fs.readFileSync(gguf);
  bytes[bytes.length - 100] ^= 0xff;
  fs.writeFileSync(gguf, bytes);
  const images = path.join(tmp, 'images');
  fs.mkdirSync(images);
  fs.copyFileSync(IMAGE, path.join(images, 'shapes.png'));
  fs.writeFileSync(path.join(images, 'broken.png'), Buffer.from('\x89PNG\r\n\x1a\nthis is not a png'));
  site = await serve({
    '/': DIST,
    '/models/sca-shapes/': MODEL,
    '/models/corrupt/': corrupt,
    '/images/': images,
    '/examples/': path.join(MODEL, 'examples'),
  });
});

after(() => {
  site?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** Opens the page with `query`, clicks the object and returns what the page and native say. */
async function clickAndCompare(t, browser, query, shot) {
  const page = await browser.ctx.newPage();
  await page.goto(`${site.url}/?${query}&image=/images/shapes.png`);
  const status = await settled(page);
  assert.match(status, /^ready/, `status: ${status}\n${browser.logs.join('\n')}`);
  const canvas = page.getByTestId('canvas');
  const box = await canvas.boundingBox();
  const size = await canvas.evaluate((c) => [c.width, c.height]);
  await canvas.click({
    position: { x: (OBJECT.x * box.width) / size[0], y: (OBJECT.y * box.height) / size[1] },
  });
  await page.waitForFunction(() => window.scaApp.regions.length === 1, null, { timeout: 60000 });
  const got = await page.evaluate(() => ({
    prompt: window.scaApp.currentPrompt,
    region: window.scaApp.regions[0],
    caption: document.querySelector('[data-testid=caption]').textContent,
    backend: window.scaApp.sca.backend,
  }));
  await screenshot(page, shot);
  // Native, on exactly the point the page used.
  const want = nativeCaption(IMAGE, got.prompt.points);
  assert.equal(got.region.caption, want.caption, 'caption differs from `sca caption`');
  assert.equal(got.caption.trim(), want.caption);
  const best = want.iou.indexOf(Math.max(...want.iou));
  const iou = maskIou(rleDecode(got.region.segmentation), rleDecode(want.masks[best]));
  t.diagnostic(`${got.backend}: "${got.region.caption}" (native "${want.caption}"), mask IoU ${iou.toFixed(4)}`);
  assert.ok(iou >= 0.99, `mask IoU with native ${iou} < 0.99`);
  await page.close();
  return got;
}

test('CPU encoder: a click gives the native caption and mask', async (t) => {
  const browser = await launch();
  try {
    const got = await clickAndCompare(t, browser, 'encoder=cpu', 'cpu-click');
    assert.equal(got.backend, 'cpu');
    // Ground-truth boxes of the other example images: the same tokens, masks with IoU >= 0.99.
    const page = await browser.ctx.newPage();
    await page.goto(`${site.url}/?encoder=cpu`);
    for (const [image, box] of [
      ['shapes-777-1.png', [101, 115, 134, 148]],
      ['shapes-777-2.png', [112, 153, 185, 226]],
      ['shapes-777-3.png', [30, 99, 107, 175]],
      ['shapes-777-0.png', [124, 37, 181, 95]],
    ]) {
      const r = await page.evaluate(
        async ({ image, box }) => {
          await window.scaApp.open(`/examples/${image}`);
          const r = await window.scaApp.prompt({ box });
          return { tokens: r.tokens, caption: r.caption, region: window.scaApp.regions.at(-1) };
        },
        { image, box },
      );
      const want = nativeCaption(path.join(MODEL, 'examples', image), [], box);
      const best = want.iou.indexOf(Math.max(...want.iou));
      const iou = maskIou(rleDecode(r.region.segmentation), rleDecode(want.masks[best]));
      t.diagnostic(`${image} box ${box}: "${r.caption}" (native "${want.caption}"), mask IoU ${iou.toFixed(4)}`);
      assert.deepEqual(r.tokens, want.tokens, `${image}: tokens differ from native`);
      assert.ok(iou >= 0.99, `${image}: mask IoU ${iou} < 0.99`);
    }
  } finally {
    await browser.close();
  }
});

test('WebGPU encoder (SwiftShader): a click gives the native caption and mask', async (t) => {
  const browser = await launch({ webgpu: true });
  try {
    const got = await clickAndCompare(t, browser, 'encoder=webgpu', 'webgpu-click');
    assert.equal(got.backend, 'webgpu');
  } finally {
    await browser.close();
  }
});

test('"auto" falls back to the CPU when there is no WebGPU adapter', async () => {
  const browser = await launch(); // headless without --enable-unsafe-webgpu: no adapter
  try {
    const page = await browser.ctx.newPage();
    await page.goto(`${site.url}/?encoder=auto&image=/images/shapes.png`);
    const status = await settled(page);
    await screenshot(page, 'auto-fallback');
    assert.match(status, /^ready — cpu/, status);
    assert.equal(await page.evaluate(() => window.scaApp.sca.backend), 'cpu');
  } finally {
    await browser.close();
  }
});

test('errors are shown in the status line', async () => {
  const browser = await launch();
  try {
    const page = await browser.ctx.newPage();
    const cases = [
      ['bundle=/models/missing/&encoder=cpu', /^error: .*manifest.*404/, 'error-404-bundle'],
      ['bundle=/models/corrupt/&encoder=cpu', /^error: checksum mismatch: bundle file decoder\.gguf/, 'error-checksum'],
      ['encoder=cpu&image=/images/broken.png', /^error: .*(malformed|decode)/i, 'error-malformed-image'],
    ];
    for (const [query, want, shot] of cases) {
      await page.goto(`${site.url}/?${query}`);
      const status = await settled(page);
      await screenshot(page, shot);
      assert.match(status, want, `${query}: status "${status}"`);
      assert.equal(await page.getByTestId('status').getAttribute('data-state'), 'error');
    }
  } finally {
    await browser.close();
  }
});

test('after one visit the page and the model work offline', async (t) => {
  const browser = await launch();
  try {
    const page = await browser.ctx.newPage();
    const idle = () =>
      page.waitForFunction(
        () => ['idle', 'error'].includes(document.querySelector('[data-testid=status]').dataset.state),
        null,
        { timeout: 120000 },
      );
    await page.goto(`${site.url}/?encoder=cpu`);
    await idle();
    // The service worker has installed (page shell cached) and controls the page.
    await page.evaluate(async () => {
      await navigator.serviceWorker.ready;
      if (!navigator.serviceWorker.controller) {
        await new Promise((r) => navigator.serviceWorker.addEventListener('controllerchange', r, { once: true }));
      }
    });
    await browser.ctx.setOffline(true);
    await page.reload();
    await idle();
    const net = await page.evaluate(() => fetch('/images/shapes.png').then(() => 'online', () => 'offline'));
    assert.equal(net, 'offline', 'the network is really off');
    const status = await page.getByTestId('status').textContent();
    assert.doesNotMatch(status, /^error/, `offline reload: ${status}\n${browser.logs.join('\n')}`);
    await page.getByTestId('file-input').setInputFiles(IMAGE);
    assert.match(await settled(page), /^ready/);
    const canvas = page.getByTestId('canvas');
    const box = await canvas.boundingBox();
    await canvas.click({ position: { x: (OBJECT.x * box.width) / 256, y: (OBJECT.y * box.height) / 256 } });
    await page.waitForFunction(() => window.scaApp.regions.length === 1, null, { timeout: 60000 });
    const got = await page.evaluate(() => ({ prompt: window.scaApp.currentPrompt, caption: window.scaApp.regions[0].caption }));
    await screenshot(page, 'offline');
    const want = nativeCaption(IMAGE, got.prompt.points);
    t.diagnostic(`offline: "${got.caption}"`);
    assert.equal(got.caption, want.caption);
  } finally {
    await browser.ctx.setOffline(false);
    await browser.close();
  }
});

test('served by `sca serve` with the server encoder (/v1/embed)', async (t) => {
  const sca = process.env.SCA_BIN || path.join(ROOT, 'target/debug/sca');
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = spawn(sca, ['serve', '--model', MODEL, '--web', DIST, '--addr', `127.0.0.1:${port}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  server.stderr.on('data', (d) => (stderr += d));
  const base = `http://127.0.0.1:${port}`;
  const browser = await launch();
  try {
    for (let i = 0; ; i++) {
      const ok = await fetch(`${base}/healthz`).then((r) => r.ok, () => false);
      if (ok) break;
      if (i > 600 || server.exitCode !== null) throw new Error(`sca serve did not start:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const page = await browser.ctx.newPage();
    await page.goto(`${base}/?encoder=server`); // the default bundle: /models/sca-shapes/
    await page.waitForFunction(
      () => ['idle', 'error'].includes(document.querySelector('[data-testid=status]').dataset.state),
      null,
      { timeout: 120000 },
    );
    await page.getByTestId('file-input').setInputFiles(IMAGE);
    const status = await settled(page);
    assert.match(status, /^ready — server/, `${status}\n${browser.logs.join('\n')}`);
    const canvas = page.getByTestId('canvas');
    const box = await canvas.boundingBox();
    await canvas.click({ position: { x: (OBJECT.x * box.width) / 256, y: (OBJECT.y * box.height) / 256 } });
    await page.waitForFunction(() => window.scaApp.regions.length === 1, null, { timeout: 60000 });
    const got = await page.evaluate(() => ({ prompt: window.scaApp.currentPrompt, region: window.scaApp.regions[0] }));
    await screenshot(page, 'server-encoder');
    const want = nativeCaption(IMAGE, got.prompt.points);
    const best = want.iou.indexOf(Math.max(...want.iou));
    const iou = maskIou(rleDecode(got.region.segmentation), rleDecode(want.masks[best]));
    t.diagnostic(`server: "${got.region.caption}", mask IoU ${iou.toFixed(4)}`);
    assert.equal(got.region.caption, want.caption);
    assert.ok(iou >= 0.99, `mask IoU with native ${iou} < 0.99`);
  } finally {
    await browser.close();
    server.kill('SIGTERM');
  }
});

test('"Caption everything" agrees with `sca anything` on the same settings', async (t) => {
  // The bundled model keeps nothing at the official thresholds (0.88 / 0.95); lower ones give it
  // regions to compare.
  const opts = { pointsPerSide: 8, beams: 1, predIouThresh: 0.5, stabilityScoreThresh: 0.5 };
  const out = path.join(tmp, 'anything.json');
  const r = spawnSync(process.env.SCA_BIN || path.join(ROOT, 'target/debug/sca'), [
    'anything', IMAGE, '--model', MODEL, '--points-per-side', '8', '--beams', '1',
    '--pred-iou-thresh', '0.5', '--stability-thresh', '0.5', '--out', out,
  ], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const want = JSON.parse(fs.readFileSync(out, 'utf8')).regions;
  const browser = await launch();
  try {
    const page = await browser.ctx.newPage();
    await page.goto(`${site.url}/?encoder=cpu&image=/images/shapes.png`);
    assert.match(await settled(page), /^ready/);
    const got = await page.evaluate((o) => window.scaApp.anything(o), opts);
    const listed = await page.getByTestId('regions').locator('li').allTextContents();
    await screenshot(page, 'caption-everything');
    t.diagnostic(`native: ${want.map((g) => `${g.caption} ${g.bbox} ${g.predicted_iou.toFixed(3)}`).join("; ")}`);
    t.diagnostic(`browser: ${got.map((g) => `${g.caption} ${g.bbox} ${g.predicted_iou.toFixed(3)}`).join("; ")}`);
    assert.equal(listed.length, got.length, 'one list entry per region');
    assert.ok(want.length > 0);
    // The bundle's decoder is q8_0: its matmuls quantize activations to 8 bits, so the float
    // noise between wasm SIMD and native AVX (1e-6) flips single quantization steps, and a few
    // boundary pixels, near-tie caption words and near-threshold regions can differ (the click
    // test above holds the exact contract on one prompt). Here: the same regions (mask IoU >= 0.9)
    // for every native region clear of the thresholds, and the same caption for >= 80% of them.
    assert.ok(Math.abs(got.length - want.length) <= 1, `${got.length} vs ${want.length} regions`);
    const clear = want.filter((w) => w.predicted_iou > 0.52 && w.stability_score > 0.52);
    let same = 0;
    for (const w of clear) {
      const wm = rleDecode(w.segmentation);
      // The browser region that overlaps it most (nested regions can both be >= 0.9).
      let m = null;
      let best = 0;
      for (const g of got) {
        const v = maskIou(rleDecode(g.segmentation), wm);
        if (v > best) [m, best] = [g, v];
      }
      assert.ok(m && best >= 0.9, `native region ${JSON.stringify(w.bbox)} "${w.caption}" has no browser region with mask IoU >= 0.9 (best ${best})`);
      assert.ok(Math.abs(m.predicted_iou - w.predicted_iou) < 0.02, `predicted IoU ${m.predicted_iou} vs ${w.predicted_iou}`);
      if (m.caption === w.caption) same++;
    }
    assert.ok(same >= 0.8 * clear.length, `captions agree on ${same} of ${clear.length} regions`);
    assert.ok(listed.every((l) => !l.includes('captioning…')), 'every listed region has its caption');
  } finally {
    await browser.close();
  }
});
