// COCO helpers: compressed RLE (pycocotools' format) and a COCO-style results file.

/**
 * Compressed COCO RLE of a row-major (height, width) 0/1 mask, as pycocotools writes it
 * (column-major runs, starting with a background run; LEB128-like, 6 bits per char, +48).
 */
export function rleEncode(data, height, width) {
  const runs = [];
  let cur = 0;
  let count = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const v = data[y * width + x] ? 1 : 0;
      if (v !== cur) {
        runs.push(count);
        count = 0;
        cur = v;
      }
      count++;
    }
  }
  runs.push(count);
  let s = '';
  for (let i = 0; i < runs.length; i++) {
    let x = runs[i];
    if (i > 2) x -= runs[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return { size: [height, width], counts: s };
}

/** `[x, y, w, h]` of the 0/1 pixels of a row-major mask (zeros when empty). */
export function maskBbox(data, height, width) {
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[y * width + x]) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return x1 < 0 ? [0, 0, 0, 0] : [x0, y0, x1 - x0 + 1, y1 - y0 + 1];
}

/**
 * A COCO-style object for regions from `anything()` (records with `segmentation`) or from
 * `caption()` (`{caption, masks, iou}`: the best mask is used).
 */
export function toCoco(regions, { fileName = 'image.png', width, height, imageId = 1 } = {}) {
  const annotations = regions.map((r, i) => {
    let seg = r.segmentation;
    let area = r.area;
    let bbox = r.bbox;
    let iou = r.predicted_iou;
    if (!seg) {
      const masks = r.masks || [];
      if (!masks.length) throw new Error(`toCoco: region ${i} has neither segmentation nor masks`);
      const ious = Array.from(r.iou || []);
      const best = ious.length ? ious.indexOf(Math.max(...ious)) : 0;
      const m = masks[best];
      seg = rleEncode(m.data, m.height, m.width);
      area = m.data.reduce((a, v) => a + (v ? 1 : 0), 0);
      bbox = maskBbox(m.data, m.height, m.width);
      iou = ious[best];
    }
    return {
      id: i + 1,
      image_id: imageId,
      category_id: 1,
      segmentation: seg,
      area,
      bbox: Array.from(bbox),
      iscrowd: 0,
      predicted_iou: iou,
      stability_score: r.stability_score ?? null,
      point_coords: r.point ? [Array.from(r.point)] : undefined,
      caption: r.caption || '',
    };
  });
  const [h, w] = annotations.length ? annotations[0].segmentation.size : [height, width];
  return {
    images: [{ id: imageId, file_name: fileName, width: width ?? w, height: height ?? h }],
    annotations,
    categories: [{ id: 1, name: 'object' }],
  };
}

/** Decodes a compressed COCO RLE into a row-major 0/1 Uint8Array of height * width. */
export function rleDecode({ size: [height, width], counts }) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = counts.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  const out = new Uint8Array(height * width);
  let i = 0;
  let v = 0;
  for (const r of runs) {
    for (let j = 0; j < r; j++, i++) {
      if (v) out[(i % height) * width + Math.floor(i / height)] = 1;
    }
    v ^= 1;
  }
  return out;
}
