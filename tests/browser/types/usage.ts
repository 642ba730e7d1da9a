// Type-checks the package's index.d.ts against the README's usage (tsc --noEmit, no output).
import { Sca, toCoco, rleDecode, type AnythingRegion, type CaptionResult, type Prompt } from 'sca-wasm';

export async function demo(file: Blob): Promise<string> {
  const sca = await Sca.load({
    bundleUrl: '/models/sca-shapes/',
    encoder: { server: 'http://127.0.0.1:8080' },
    onProgress: (e) => console.log(e.phase, e.file, e.loaded / Math.max(e.total, 1)),
  });
  const backend: 'webgpu' | 'cpu' | 'server' = sca.backend;
  const { width, height } = await sca.setImage(file);
  const prompt: Prompt = { points: [{ x: width / 2, y: height / 2, label: 1 }], multimask: true };
  const seg = await sca.segment(prompt);
  const first: Uint8Array = seg.masks[0].data;
  const run = sca.caption(prompt, { maxNewTokens: 20 });
  let text = '';
  for await (const piece of run) text += piece;
  const done: CaptionResult = await run.done;
  const regions: AnythingRegion[] = await sca.anything({ pointsPerSide: 16, beams: 1 }, (r, { phase }) => {
    if (phase === 'caption') console.log(r.caption, r.bbox);
  });
  const coco = toCoco([...regions, done], { fileName: 'a.png' });
  const mask: Uint8Array = rleDecode(regions[0].segmentation);
  sca.close();
  return `${backend} ${text} ${first.length} ${coco.annotations.length} ${mask.length}`;
}
