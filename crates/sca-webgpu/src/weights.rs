//! Reading `vision_encoder.*` tensors: key lookup, shape checks, f32 conversion, and the
//! re-layouts the kernels want.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// The weights of one encoder: official key names (`vision_encoder.layers.0.attn.qkv.weight`,
/// ...), tensors of any float dtype on the CPU.
pub(crate) struct Weights<'a> {
    map: &'a HashMap<String, Tensor>,
}

const PREFIX: &str = "vision_encoder.";

impl<'a> Weights<'a> {
    pub fn new(map: &'a HashMap<String, Tensor>) -> Self {
        Self { map }
    }

    fn tensor(&self, name: &str) -> Result<(&'a Tensor, String)> {
        let key = format!("{PREFIX}{name}");
        match self.map.get(&key) {
            Some(t) => Ok((t, key)),
            None => Err(Error::MissingWeight { name: key }),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(&format!("{PREFIX}{name}"))
    }

    /// The f32 values of `name`, which must have shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (t, key) = self.tensor(name)?;
        if t.dims() != shape {
            return Err(Error::WeightShape {
                name: key,
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        to_vec(t, &key)
    }

    /// A relative-position table (len, hd). A table of another length is resized by linear
    /// interpolation as SAM / transformers do (`F.interpolate(mode="linear")`); the candle
    /// reference only accepts the exact length, where both agree (the resize is the identity).
    pub fn rel_pos(&self, name: &str, len: usize, hd: usize) -> Result<Vec<f32>> {
        let (t, key) = self.tensor(name)?;
        match t.dims() {
            &[l, d] if d == hd && l > 0 => {
                let v = to_vec(t, &key)?;
                Ok(if l == len {
                    v
                } else {
                    resize_linear(&v, l, len, hd)
                })
            }
            got => Err(Error::WeightShape {
                name: key,
                expected: vec![len, hd],
                got: got.to_vec(),
            }),
        }
    }
}

fn to_vec(t: &Tensor, key: &str) -> Result<Vec<f32>> {
    let err = |e: candle_core::Error| Error::WeightData {
        name: key.to_string(),
        msg: e.to_string(),
    };
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(err)
}

/// Rows of `(l, hd)` resampled to `len` rows: PyTorch's linear interpolation with
/// `align_corners=False`.
pub(crate) fn resize_linear(v: &[f32], l: usize, len: usize, hd: usize) -> Vec<f32> {
    let scale = l as f64 / len as f64;
    let mut out = vec![0f32; len * hd];
    for (i, row) in out.chunks_exact_mut(hd).enumerate() {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as usize).min(l - 1);
        let i1 = (i0 + 1).min(l - 1);
        let t = (src - i0 as f64) as f32;
        for (d, o) in row.iter_mut().enumerate() {
            *o = v[i0 * hd + d] * (1.0 - t) + v[i1 * hd + d] * t;
        }
    }
    out
}

/// A (cout, cin, 3, 3) kernel as (cout, 9*cin) with columns (ky, kx, cin): the layout of the
/// 3x3 im2col.
pub(crate) fn conv3x3_taps(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for o in 0..cout {
        for i in 0..cin {
            for tap in 0..9 {
                out[(o * 9 + tap) * cin + i] = w[(o * cin + i) * 9 + tap];
            }
        }
    }
    out
}

/// IEEE binary16 bits of `x`, rounded to nearest-even (as `half::f16::from_f32` and
/// PyTorch's `.half()`); beyond the f16 range: infinity.
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        // infinity, or a quiet NaN
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // (bits kept, bits shifted out): normal f16, or subnormal (value = m * 2^-24)
    let (kept, shift) = if e > 0 {
        (((e as u32) << 10) | (man >> 13), 13)
    } else if e >= -10 {
        ((man | 0x80_0000) >> (14 - e), (14 - e) as u32)
    } else {
        return sign; // below half the smallest subnormal
    };
    let full = if e > 0 { man } else { man | 0x80_0000 };
    let rem = full & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    // a carry out of the mantissa moves to the next binade (or to infinity), as it should
    let rounded = kept + u32::from(rem > half || (rem == half && kept & 1 == 1));
    sign | rounded as u16
}

/// `v` as f16 bits for an f16 weight buffer; a value beyond the f16 range is an error (the
/// f32 precision carries it).
pub(crate) fn to_f16(v: &[f32], key: &str) -> Result<Vec<u16>> {
    v.iter()
        .map(|&x| {
            let h = f32_to_f16(x);
            if x.is_finite() && h & 0x7c00 == 0x7c00 {
                Err(Error::WeightData {
                    name: format!("{PREFIX}{key}"),
                    msg: format!("{x} is beyond the f16 range (use Precision::F32)"),
                })
            } else {
                Ok(h)
            }
        })
        .collect()
}

/// Random encoder weights for `cfg` under the official key names (benchmarks and tests of
/// configs without a checkpoint). Deterministic in `seed`; scaled so activations stay O(1).
pub fn random_weights(cfg: &sca_core::config::VisionConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = move || {
        // xorshift64*: plenty for weights, and fast enough for ViT-H
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let (c, p, cin, g) = (
        cfg.hidden_size,
        cfg.patch_size,
        cfg.num_channels,
        cfg.grid_size(),
    );
    let (cout, mlp) = (cfg.output_channels, cfg.mlp_dim);
    let hd = c / cfg.num_attention_heads.max(1);
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32| {
        let len = shape.iter().product();
        let v: Vec<f32> = (0..len).map(|_| offset + scale * uniform()).collect();
        let t = Tensor::from_vec(v, shape, &candle_core::Device::Cpu).expect("shape");
        w.insert(format!("{PREFIX}{name}"), t);
    };
    // uniform(-a, a) has std a/sqrt(3): a = sqrt(3/fan_in) keeps unit variance
    let lin = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    put(
        "patch_embed.projection.weight".into(),
        &[c, cin, p, p],
        lin(cin * p * p),
        0.0,
    );
    put("patch_embed.projection.bias".into(), &[c], 0.1, 0.0);
    if cfg.use_abs_pos {
        put("pos_embed".into(), &[1, g, g, c], 0.5, 0.0);
    }
    for i in 0..cfg.num_hidden_layers {
        let l = format!("layers.{i}");
        let ws = if cfg.global_attn_indexes.contains(&i) {
            g
        } else {
            cfg.window_size
        };
        for ln in ["layer_norm1", "layer_norm2"] {
            put(format!("{l}.{ln}.weight"), &[c], 0.2, 1.0);
            put(format!("{l}.{ln}.bias"), &[c], 0.1, 0.0);
        }
        put(format!("{l}.attn.qkv.weight"), &[3 * c, c], lin(c), 0.0);
        if cfg.qkv_bias {
            put(format!("{l}.attn.qkv.bias"), &[3 * c], 0.5, 0.0);
        }
        put(format!("{l}.attn.proj.weight"), &[c, c], lin(c), 0.0);
        put(format!("{l}.attn.proj.bias"), &[c], 0.1, 0.0);
        if cfg.use_rel_pos {
            put(format!("{l}.attn.rel_pos_h"), &[2 * ws - 1, hd], 0.5, 0.0);
            put(format!("{l}.attn.rel_pos_w"), &[2 * ws - 1, hd], 0.5, 0.0);
        }
        put(format!("{l}.mlp.lin1.weight"), &[mlp, c], lin(c), 0.0);
        put(format!("{l}.mlp.lin1.bias"), &[mlp], 0.1, 0.0);
        put(format!("{l}.mlp.lin2.weight"), &[c, mlp], lin(mlp), 0.0);
        put(format!("{l}.mlp.lin2.bias"), &[c], 0.1, 0.0);
    }
    put("neck.conv1.weight".into(), &[cout, c, 1, 1], lin(c), 0.0);
    put(
        "neck.conv2.weight".into(),
        &[cout, cout, 3, 3],
        lin(9 * cout),
        0.0,
    );
    for ln in ["layer_norm1", "layer_norm2"] {
        put(format!("neck.{ln}.weight"), &[cout], 0.2, 1.0);
        put(format!("neck.{ln}.bias"), &[cout], 0.1, 0.0);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_is_identity_at_same_length_and_matches_torch() {
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        assert_eq!(resize_linear(&v, 3, 3, 2), v);
        // torch: F.interpolate(tensor([[[0., 1., 2.]]]), size=5, mode="linear")
        //   = [0.0, 0.4, 1.0, 1.6, 2.0]  (source index (i+0.5)*3/5-0.5, clamped at 0)
        let r = resize_linear(&[0.0, 1.0, 2.0], 3, 5, 1);
        let want = [0.0, 0.4, 1.0, 1.6, 2.0];
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{r:?}");
        }
    }

    /// Against candle's (the `half` crate's) f32 -> f16 -> f32: normals, ties, subnormals,
    /// overflow, signed zero.
    #[test]
    fn f16_rounding_matches_half() {
        fn f16_to_f32(h: u16) -> f32 {
            let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
            let e = ((h >> 10) & 0x1f) as i32;
            let m = (h & 0x3ff) as f32;
            sign * match e {
                0 => m * 2f32.powi(-24),
                0x1f if m == 0.0 => f32::INFINITY,
                0x1f => f32::NAN,
                _ => (1.0 + m / 1024.0) * 2f32.powi(e - 15),
            }
        }
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65519.0,
            65520.0,
            1e6,
            -1e6,
            6.1e-5,
            6.0e-5,
            5.96e-8,
            2.98e-8,
            2.9e-8,
            3.0e-8,
            1e-9,
            0.1,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bits = (state >> 32) as u32;
            let x = f32::from_bits(bits);
            if x.is_finite() && x.abs() < 1e5 && x.abs() > 1e-9 {
                v.push(x);
            }
            // O(1) values with random low mantissa bits: many near-ties
            v.push((state as u32 >> 9) as f32 / (1u32 << 23) as f32 * 8.0 - 4.0);
        }
        let want = Tensor::new(v.as_slice(), &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, w) in v.iter().zip(want) {
            let got = f16_to_f32(f32_to_f16(*x));
            assert!(
                got.to_bits() == w.to_bits(),
                "{x:e}: got {got:e}, half gives {w:e}"
            );
        }
        assert!(to_f16(&[1.0, 7e4], "k")
            .unwrap_err()
            .to_string()
            .contains("f16 range"));
    }

    #[test]
    fn conv_taps_layout() {
        // cout 1, cin 2: w[0, i, ky, kx] = 10*i + 3*ky + kx
        let w: Vec<f32> = (0..2)
            .flat_map(|i| (0..9).map(move |t| (10 * i + t) as f32))
            .collect();
        let t = conv3x3_taps(&w, 1, 2);
        assert_eq!(t[4 * 2 + 1], 14.0); // tap (1,1), cin 1
        assert_eq!(t[8 * 2], 8.0); // tap (2,2), cin 0
    }
}
