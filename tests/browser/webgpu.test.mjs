// The WebGPU encoder of the npm package's wasm module, in headless Chromium (SwiftShader), on
// every parity fixture: the fixture's pixel values in, its official `image_embeddings` out, within
// 1e-3 of the embedding's max magnitude (the tolerance; lavapipe natively reaches ~1e-6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, serve, launch } from './harness.mjs';

const PARITY = process.env.SCA_PARITY_DIR || path.resolve(ROOT, '../shared/parity');
const PKG = path.join(ROOT, 'target/npm/sca-wasm');

/** The f32 tensors of a safetensors file, by name: {shape, data: number[]}. */
function readSafetensors(file, names) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString());
  const out = {};
  for (const name of names) {
    const t = header[name];
    assert.ok(t, `${file} has no ${name}`);
    assert.equal(t.dtype, 'F32', `${file}: ${name} is ${t.dtype}`);
    const [s, e] = t.data_offsets;
    const bytes = b.subarray(8 + n + s, 8 + n + e);
    const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    out[name] = { shape: t.shape, data: Array.from(data) };
  }
  return out;
}

test('WebGPU encoder in Chromium matches every parity fixture within 1e-3', async (t) => {
  assert.ok(fs.existsSync(path.join(PKG, 'sca_wasm.js')), 'run bash scripts/build-npm.sh first');
  const fixtures = fs
    .readdirSync(PARITY)
    .filter((d) => fs.existsSync(path.join(PARITY, d, 'outputs.safetensors')) && fs.existsSync(path.join(PARITY, d, 'config.json')))
    .filter((d) => JSON.parse(fs.readFileSync(path.join(PARITY, d, 'config.json'), 'utf8')).vision_config);
  assert.ok(fixtures.length > 0, `no SCA fixtures under ${PARITY}`);
  const site = await serve({ '/pkg/': PKG, '/parity/': PARITY, '/': path.join(ROOT, 'tests/browser') });
  const browser = await launch({ webgpu: true });
  try {
    const page = await browser.ctx.newPage();
    await page.goto(`${site.url}/pkg/package.json`); // any same-origin page to run the module in
    for (const name of fixtures) {
      const ref = readSafetensors(path.join(PARITY, name, 'outputs.safetensors'), ['pixel_values', 'image_embeddings']);
      const got = await page.evaluate(
        async ({ name, pixels }) => {
          const { default: init, GpuEncoder } = await import('/pkg/sca_wasm.js');
          await init();
          const config = await (await fetch(`/parity/${name}/config.json`)).text();
          const weights = new Uint8Array(await (await fetch(`/parity/${name}/model.safetensors`)).arrayBuffer());
          const enc = await GpuEncoder.create(config, weights);
          const out = await enc.embed(new Float32Array(pixels));
          return { adapter: enc.adapterInfo(), out: Array.from(out) };
        },
        { name, pixels: ref.pixel_values.data },
      );
      const want = ref.image_embeddings.data;
      assert.equal(got.out.length, want.length, `${name}: embedding length`);
      let maxDiff = 0;
      let maxRef = 0;
      for (let i = 0; i < want.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(got.out[i] - want[i]));
        maxRef = Math.max(maxRef, Math.abs(want[i]));
      }
      t.diagnostic(`${name} on ${got.adapter}: max|diff| ${maxDiff.toExponential(2)}, max|ref| ${maxRef.toFixed(3)}`);
      assert.ok(maxDiff <= 1e-3 * maxRef, `${name}: max|diff| ${maxDiff} > 1e-3 * ${maxRef}`);
    }
  } finally {
    await browser.close();
    site.close();
  }
});
