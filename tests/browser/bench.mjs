// Drives web/bench.html in headless Chromium and prints its table (a benchmark, not a test).
//   node tests/browser/bench.mjs --bundle DIR [--encoder cpu|webgpu|auto] [--n 5] [--encodes 1]
//                                [--tokens 20] [--timeout-min 30]
// Compare with the native figures of `sca bench --config CONFIG` on the same machine.
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, serve, launch } from './harness.mjs';

const { values: a } = parseArgs({
  options: {
    bundle: { type: 'string' },
    encoder: { type: 'string', default: 'cpu' },
    n: { type: 'string', default: '5' },
    encodes: { type: 'string', default: '1' },
    tokens: { type: 'string', default: '20' },
    'timeout-min': { type: 'string', default: '30' },
  },
});
if (!a.bundle) throw new Error('--bundle DIR is required (a bundle written by `export bundle`)');
const site = await serve({ '/': path.join(ROOT, 'web/dist'), '/models/bench/': path.resolve(a.bundle) });
const browser = await launch({ webgpu: a.encoder !== 'cpu' });
try {
  const page = await browser.ctx.newPage();
  const q = new URLSearchParams({ bundle: '/models/bench/', encoder: a.encoder, n: a.n, encodes: a.encodes, tokens: a.tokens, warmup: '1' });
  await page.goto(`${site.url}/bench.html?${q}`);
  await page.waitForFunction(() => window.benchResults, null, { timeout: Number(a['timeout-min']) * 60000 });
  const r = await page.evaluate(() => window.benchResults);
  console.log(await page.locator('#results').textContent());
  if (r.error) {
    console.error(browser.logs.join('\n'));
    process.exitCode = 1;
  }
} finally {
  await browser.close();
  site.close();
}
