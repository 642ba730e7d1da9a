// Shared pieces of the browser tests: a static file server, headless Chromium, the native
// reference (`sca caption`), and mask comparison.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const MODEL = path.join(ROOT, 'models/sca-shapes');
export const OUT = process.env.SCA_BROWSER_OUT || path.join(ROOT, 'target/browser-tests');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCA_BIN = process.env.SCA_BIN || path.join(ROOT, 'target/debug/sca');

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
};

/** Serves `routes` ({'/url/prefix/': '/dir'}, longest prefix wins) on 127.0.0.1. */
export async function serve(routes) {
  const prefixes = Object.keys(routes).sort((a, b) => b.length - a.length);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const prefix = prefixes.find((p) => url.pathname.startsWith(p));
    let file = prefix && path.join(routes[prefix], decodeURIComponent(url.pathname.slice(prefix.length)));
    if (file && fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
      'cache-control': 'no-cache',
    });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

/** Headless Chromium; `webgpu` adds the flags that give WebGPU (SwiftShader) to headless. */
export async function launch({ webgpu = false } = {}) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: run bash scripts/setup.sh (apt-get install -y chromium)`);
  }
  const args = [
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
  ];
  if (webgpu) args.push('--enable-unsafe-webgpu'); // a SwiftShader (fallback) adapter, f32 only
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sca-chromium-'));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    viewport: { width: 1200, height: 900 },
  });
  const logs = [];
  ctx.on('page', (p) => p.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`)));
  return {
    ctx,
    logs,
    async close() {
      await ctx.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page, name) {
  fs.mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: true });
}

/** Waits until the status line's state is `ready` or `error`; returns its text. */
export async function settled(page, timeout = 120000) {
  const status = page.getByTestId('status');
  await page.waitForFunction(
    () => ['ready', 'error'].includes(document.querySelector('[data-testid=status]').dataset.state),
    null,
    { timeout },
  );
  return status.textContent();
}

/** The native CLI's answer for points and/or a box (multimask, greedy, 19 tokens). */
export function nativeCaption(image, points, box) {
  if (!fs.existsSync(SCA_BIN)) {
    throw new Error(`native sca binary missing at ${SCA_BIN}: run cargo build -p sca-cli (or set SCA_BIN)`);
  }
  const args = ['caption', image, '--model', MODEL, '--multimask', '--json'];
  for (const p of points) args.push('--point', `${p.x},${p.y},${p.label ?? 1}`);
  if (box) args.push('--box', box.join(','));
  const r = spawnSync(SCA_BIN, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sca caption failed: ${r.stderr}`);
  return JSON.parse(r.stdout).regions[0];
}

export function maskIou(a, b) {
  let inter = 0;
  let uni = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] ? 1 : 0;
    const y = b[i] ? 1 : 0;
    inter += x & y;
    uni += x | y;
  }
  return uni ? inter / uni : 1;
}
