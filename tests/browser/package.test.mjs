// The packed npm tarball, installed into a fresh project as a user would, works there: its
// README's usage (load, setImage, segment, streamed caption) in headless Chromium gives the
// native CLI's caption.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { ROOT, MODEL, serve, launch, screenshot, nativeCaption } from './harness.mjs';

const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'target/npm/sca-wasm/package.json'), 'utf8')).version;
const TARBALL = path.join(ROOT, `target/npm/sca-wasm-${version}.tgz`);

const PAGE = `<!doctype html>
<script type="importmap">{ "imports": { "sca-wasm": "./node_modules/sca-wasm/index.js" } }</script>
<pre id="out">loading</pre>
<script type="module">
  import { Sca, toCoco } from 'sca-wasm';
  const out = document.getElementById('out');
  try {
    const events = [];
    const sca = await Sca.load({ bundleUrl: '/model/', encoder: 'cpu', onProgress: (e) => events.push(e.phase) });
    const img = await (await fetch('/image.png')).blob();
    const { width, height } = await sca.setImage(img);
    const prompt = { points: [{ x: 186, y: 152, label: 1 }] };
    const seg = await sca.segment(prompt);
    const run = sca.caption(prompt, { maxNewTokens: 19 });
    const pieces = [];
    for await (const piece of run) pieces.push(piece);
    const done = await run.done;
    const coco = toCoco([done], { fileName: 'image.png' });
    // A new caption (a new click) cancels the running one.
    const first = sca.caption({ box: [10, 10, 120, 120] }, { maxNewTokens: 19 });
    const second = sca.caption(prompt, { maxNewTokens: 19 });
    const [c1, c2] = await Promise.all([first.done, second.done]);
    // Bad input: JS errors with a message (no panic escapes; the session keeps working).
    const errors = [];
    for (const bad of [{ points: [{ x: -5, y: 1e9 }] }, {}, { points: [{ x: 1, y: 1, label: 7 }] }, { box: [1, 2] }]) {
      errors.push(await sca.segment(bad).then(() => 'no error', (e) => e.message));
    }
    errors.push(await sca.setImage(new Uint8Array([1, 2, 3])).then(() => 'no error', (e) => e.message));
    const after = (await sca.segment(prompt)).masks.length;
    window.result = { width, height, pieces, caption: done.caption, tokens: done.tokens,
      masks: seg.masks.length, cancelled: [c1.cancelled, c2.cancelled], second: c2.caption, errors, after, phases: [...new Set(events)], coco, backend: sca.backend };
    out.textContent = JSON.stringify(window.result, null, 1);
  } catch (e) {
    window.result = { error: e.message };
    out.textContent = 'error: ' + e.message;
  }
</script>`;

test('npm pack tarball installs into a fresh project and works there', async (t) => {
  assert.ok(fs.existsSync(TARBALL), `${TARBALL} missing: run bash scripts/build-npm.sh`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sca-npm-app-'));
  const browser = await launch();
  let site;
  try {
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'app', private: true }));
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--silent', TARBALL], { cwd: dir });
    const pkg = path.join(dir, 'node_modules/sca-wasm');
    for (const f of ['index.js', 'index.d.ts', 'worker.js', 'sca_wasm.js', 'sca_wasm_bg.wasm', 'README.md']) {
      assert.ok(fs.existsSync(path.join(pkg, f)), `the package lacks ${f}`);
    }
    const meta = JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'), 'utf8'));
    assert.match(meta.version, /^\d+\.\d+\.\d+$/);
    assert.equal(meta.types, 'index.d.ts');
    fs.writeFileSync(path.join(dir, 'index.html'), PAGE);
    fs.copyFileSync(path.join(MODEL, 'examples/shapes-777-0.png'), path.join(dir, 'image.png'));
    site = await serve({ '/': dir, '/model/': MODEL });
    const page = await browser.ctx.newPage();
    await page.goto(`${site.url}/`);
    await page.waitForFunction(() => window.result, null, { timeout: 120000 });
    const r = await page.evaluate(() => window.result);
    await screenshot(page, 'npm-package');
    assert.equal(r.error, undefined, `${r.error}\n${browser.logs.join('\n')}`);
    const want = nativeCaption(path.join(MODEL, 'examples/shapes-777-0.png'), [{ x: 186, y: 152 }]);
    t.diagnostic(`caption "${r.caption}" streamed as ${JSON.stringify(r.pieces)}`);
    assert.equal(r.caption, want.caption);
    assert.equal(r.pieces.join(''), r.caption, 'the streamed pieces make the caption');
    assert.deepEqual(r.tokens, want.tokens);
    assert.equal(r.masks, 3);
    assert.deepEqual(r.phases, ['download', 'verify', 'init']);
    assert.equal(r.coco.annotations[0].caption, want.caption);
    assert.equal(r.backend, 'cpu');
    assert.deepEqual(r.cancelled, [true, false], 'the newer caption cancels the older');
    assert.equal(r.second, want.caption);
    t.diagnostic(`errors: ${JSON.stringify(r.errors)}`);
    assert.equal(r.errors.length, 5);
    for (const e of r.errors) assert.ok(e !== 'no error' && e.length > 10, `bad input gave: ${e}`);
    assert.match(r.errors[0], /invalid prompt/);
    assert.match(r.errors[2], /label 7/);
    assert.match(r.errors[4], /image/);
  } finally {
    site?.close();
    await browser.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
