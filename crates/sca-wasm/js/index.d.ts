// Types of the npm package `sca-wasm`.

export type Encoder = 'auto' | 'webgpu' | 'cpu' | { server: string };

export interface Progress {
  phase: 'download' | 'verify' | 'init';
  file: string;
  /** Bytes so far. */
  loaded: number;
  /** Bytes in all (0 when unknown). */
  total: number;
}

export interface LoadOptions {
  /** URL of a bundle directory (manifest.json, encoder.safetensors, decoder.gguf, tokenizer.json). */
  bundleUrl: string;
  /** "auto" picks WebGPU when an adapter exists, else the CPU. Default "auto". */
  encoder?: Encoder;
  onProgress?: (e: Progress) => void;
}

export interface Point {
  x: number;
  y: number;
  /** 1 = object (default), 0 = background. */
  label?: 0 | 1;
}

/** Original-image pixels (x right, y down). At least one point or a box. */
export interface Prompt {
  points?: Point[];
  box?: [number, number, number, number];
  /** Three candidate masks (default true) or one. */
  multimask?: boolean;
}

export interface Mask {
  width: number;
  height: number;
  /** 0/1 per pixel, row-major. */
  data: Uint8Array;
}

export interface Segmentation {
  masks: Mask[];
  iou: number[];
  /** [x1, y1, x2, y2] of the best mask. */
  box: number[];
  ms: number;
}

export interface CaptionResult {
  caption: string;
  tokens: number[] | null;
  masks: Mask[];
  iou: number[];
  cancelled: boolean;
}

export interface CaptionRun extends AsyncIterable<string> {
  /** Masks and IoU, as soon as the mask decoder is done (null on error). */
  masks: Promise<{ masks: Mask[]; iou: number[]; box: number[] } | null>;
  done: Promise<CaptionResult>;
  cancel(): void;
}

export interface CocoRle {
  size: [number, number];
  counts: string;
}

export interface AnythingRegion {
  segmentation: CocoRle;
  area: number;
  /** [x, y, w, h] */
  bbox: [number, number, number, number];
  predicted_iou: number;
  point: [number, number];
  stability_score: number;
  caption: string;
}

export interface AnythingOptions {
  pointsPerSide?: number;
  pointsPerBatch?: number;
  predIouThresh?: number;
  stabilityScoreThresh?: number;
  stabilityScoreOffset?: number;
  boxNmsThresh?: number;
  minMaskRegionArea?: number;
  /** Beam search width (default 3; 1 = greedy). */
  beams?: number;
  maxNewTokens?: number;
}

export interface AnythingProgress {
  type: 'progress';
  batchesDone: number;
  batchesTotal: number;
  candidates: number;
}

export declare class Sca {
  static load(opts: LoadOptions): Promise<Sca>;
  readonly backend: 'webgpu' | 'cpu' | 'server';
  readonly backendInfo: string;
  readonly config: Record<string, unknown>;
  readonly inputSize: number;
  setImage(image: Blob | ImageBitmap | ImageData | Uint8Array | ArrayBuffer): Promise<{ width: number; height: number; encodeMs: number }>;
  segment(prompt: Prompt): Promise<Segmentation>;
  caption(prompt: Prompt, opts?: { maxNewTokens?: number; beams?: number }): CaptionRun;
  anything(
    opts?: AnythingOptions,
    onRegion?: (region: AnythingRegion, info: { index: number; phase: 'mask' | 'caption' }) => void,
    onProgress?: (e: AnythingProgress) => void,
  ): Promise<AnythingRegion[]>;
  close(): void;
}

export declare function rleEncode(data: ArrayLike<number>, height: number, width: number): CocoRle;

export declare function toCoco(
  regions: Array<AnythingRegion | CaptionResult>,
  opts?: { fileName?: string; width?: number; height?: number; imageId?: number },
): {
  images: Array<{ id: number; file_name: string; width: number; height: number }>;
  annotations: Array<Record<string, unknown>>;
  categories: Array<{ id: number; name: string }>;
};

export declare function rleDecode(rle: CocoRle): Uint8Array;

export declare function maskBbox(data: ArrayLike<number>, height: number, width: number): [number, number, number, number];
