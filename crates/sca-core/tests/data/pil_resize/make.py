"""Regenerate the Pillow golden files used by crates/sca-core/tests/image_masks.rs.

Run offline (the Rust tests never call Python); see README.md for the exact commands:
    <python with Pillow X.Y.Z and numpy> make.py            # resize goldens -> pillow-X.Y.Z/
    <python with Pillow X.Y.Z and numpy> make.py --decode   # also decode goldens -> decode/

Resize cases: the input image is NOT stored; it is the deterministic `pattern(w, h, seed)` below,
re-implemented in the Rust test. Each case's expected `Image.resize((out_w, out_h),
Image.BILINEAR)` output is described in pillow-X.Y.Z/manifest.json by an FNV-1a 64 hash of its
raw RGB bytes (row-major, HWC) and stored as a PNG: the whole output when small, else every
`stride`-th row and column (rows/cols 0, stride, 2*stride, ...).

Decode cases (decode/): small files in several formats/modes and the expected
`ImageOps.exif_transpose(Image.open(f)).convert("RGB")` as `<name>.expected.png`, listed in
decode/manifest.json.
"""
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
M32 = 0xFFFFFFFF


def pattern(w, h, seed):
    """uint8 (h, w, 3): hashed noise on a checkerboard of 4x4 cells, smooth ramps elsewhere."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                v = ((x * 73856093) & M32) ^ ((y * 19349663) & M32) ^ (((c + seed) * 83492791) & M32)
                v = ((v ^ (v >> 13)) * 1274126177) & M32
                v ^= v >> 16
                if ((x // 4) + (y // 4) + c) % 3 == 0:
                    img[y, x, c] = v & 0xFF
                else:
                    img[y, x, c] = (x * 255 // max(w - 1, 1) + y * 255 // max(h - 1, 1) + 85 * c) % 256
    return img


def fnv1a64(b):
    hsh = 0xCBF29CE484222325
    for byte in b:
        hsh ^= byte
        hsh = (hsh * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return hsh


def sam_size(h, w, longest):
    scale = longest * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


# (name, in_w, in_h, out_w, out_h); out None = SAM longest-edge size for the given edge
RESIZE_CASES = [
    ("fixture_160x120_to_128", 160, 120, 128),
    ("up_53x37_to_1024", 53, 37, 1024),
    ("down_1000x700_to_128", 1000, 700, 128),
    ("up_3x5_to_16", 3, 5, 16),
    ("up_640x480_to_1024", 640, 480, 1024),
    ("down_131x97_to_17", 131, 97, 17),
    ("down_33x1000_to_150", 33, 1000, 150),
    ("horiz_only_1025x7_to_1024x7", 1025, 7, (1024, 7)),
    ("vert_only_9x300_to_9x41", 9, 300, (9, 41)),
    ("mixed_100x30_to_200x7", 100, 30, (200, 7)),
    ("up_1x1_to_5x3", 1, 1, (5, 3)),
    ("down_2x2_to_1x1", 2, 2, (1, 1)),
    ("down_600x2_to_7x1", 600, 2, (7, 1)),
    ("down_1024x1023_to_1000", 1024, 1023, 1000),
]
MAX_FULL_PIXELS = 12000
SAMPLE_PIXELS = 6000


def make_resize():
    d = os.path.join(HERE, f"pillow-{PIL.__version__}")
    os.makedirs(d, exist_ok=True)
    cases = []
    for i, (name, w, h, target) in enumerate(RESIZE_CASES):
        if isinstance(target, tuple):
            ow, oh = target
        else:
            oh, ow = sam_size(h, w, target)
        src = Image.fromarray(pattern(w, h, seed=i))
        out = np.asarray(src.resize((ow, oh), Image.BILINEAR))
        assert out.shape == (oh, ow, 3)
        stride = 1
        while (oh + stride - 1) // stride * ((ow + stride - 1) // stride) > (
            MAX_FULL_PIXELS if stride == 1 else SAMPLE_PIXELS
        ):
            stride += 1
        sample = np.ascontiguousarray(out[::stride, ::stride])
        fname = f"{name}.png"
        Image.fromarray(sample).save(os.path.join(d, fname), optimize=True)
        cases.append(
            dict(name=name, seed=i, in_w=w, in_h=h, out_w=ow, out_h=oh,
                 fnv1a64=f"{fnv1a64(out.tobytes()):016x}", file=fname, stride=stride)
        )
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(dict(pillow=PIL.__version__, numpy=np.__version__, resize=cases), f, indent=1)
        f.write("\n")


def raw_png(w, h, bitdepth, colortype, rows, chunks=()):
    """Minimal PNG writer for modes Pillow cannot save (16-bit RGB, 4-bit gray)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & M32)
    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0)
    data = b"".join(b"\x00" + r for r in rows)
    extra = b"".join(chunk(t, d) for t, d in chunks)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
            + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))


def exif_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


def make_decode():
    d = os.path.join(HERE, "decode")
    os.makedirs(d, exist_ok=True)
    w, h = 23, 17
    rgb = pattern(w, h, seed=100)
    base = Image.fromarray(rgb)
    alpha = Image.fromarray(pattern(w, h, seed=101)[:, :, 0])
    files = {}

    def save(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, **kw)
        files[name] = buf.getvalue()

    save("gray8.png", base.convert("L"), format="PNG")
    la = base.convert("L").convert("LA")
    la.putalpha(alpha)
    save("gray_alpha.png", la, format="PNG")
    rgba = base.copy()
    rgba.putalpha(alpha)
    save("rgba.png", rgba, format="PNG")
    save("rgb.png", base, format="PNG")
    pal = base.quantize(colors=37)
    save("palette.png", pal, format="PNG")
    save("palette_trns.png", pal, format="PNG", transparency=5)
    save("bilevel.png", base.convert("L").point(lambda v: 255 * (v > 127)).convert("1"), format="PNG")
    # 16-bit gray: values straddle 255 (Pillow I;16 -> RGB saturates at 255)
    g16 = (pattern(w, h, seed=102)[:, :, 0].astype(np.uint32) * 3).astype(">u2")
    files["gray16.png"] = raw_png(w, h, 16, 0, [g16[y].tobytes() for y in range(h)])
    r16 = (pattern(w, h, seed=103).astype(np.uint32) * 257 + np.arange(w)[None, :, None] * 7).astype(">u2")
    files["rgb16.png"] = raw_png(w, h, 16, 2, [r16[y].tobytes() for y in range(h)])
    g4 = pattern(w, h, seed=104)[:, :, 0] >> 4
    rows4 = []
    for y in range(h):
        vals = list(g4[y]) + [0]
        rows4.append(bytes((vals[i] << 4) | vals[i + 1] for i in range(0, w, 2)))
    files["gray4.png"] = raw_png(w, h, 4, 0, rows4)
    # EXIF orientation in a PNG eXIf chunk (lossless, exact comparison)
    for o in (3, 6, 8):
        save(f"exif{o}.png", base, format="PNG", exif=exif_orientation(o))
    save("lossless.webp", base, format="WEBP", lossless=True)
    save("lossy.webp", base, format="WEBP", quality=80)
    save("q90_420.jpg", base, format="JPEG", quality=90, subsampling=2)
    save("q90_444.jpg", base, format="JPEG", quality=90, subsampling=0)
    save("gray.jpg", base.convert("L"), format="JPEG", quality=90)
    save("progressive.jpg", base, format="JPEG", quality=90, progressive=True)
    for o in range(1, 9):
        save(f"exif{o}_444.jpg", base, format="JPEG", quality=95, subsampling=0, exif=exif_orientation(o))

    manifest = []
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        im = Image.open(io.BytesIO(data))
        mode = im.mode
        out = ImageOps.exif_transpose(im).convert("RGB")
        exp = f"{name}.expected.png"
        out.save(os.path.join(d, exp), optimize=True)
        manifest.append(dict(file=name, pil_mode=mode, expected=exp, width=out.width, height=out.height))
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(dict(pillow=PIL.__version__, decode=manifest), f, indent=1)
        f.write("\n")


def main():
    make_resize()
    if "--decode" in sys.argv[1:]:
        make_decode()


if __name__ == "__main__":
    main()
