//! SAM: ViT image encoder, prompt encoder, two-way transformer and mask decoder, with the weight
//! prefixes of the official state dict (`vision_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`).

pub mod image_encoder;
pub mod mask_decoder;
pub mod prompt_encoder;
pub mod two_way_transformer;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::gemm::Mat;
use crate::ops::QLinear;

pub use candle_nn::{LayerNorm, Linear};

/// A decoder-side `nn.Linear`: dense, or quantized when loading a quantized bundle.
pub(crate) fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<QLinear> {
    QLinear::new(in_dim, out_dim, vb)
}

pub(crate) fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(dim, eps, vb)
}

/// 2x2 stride-2 transposed convolution (weight (Cin, Cout, 2, 2)) on a channels-last map,
/// done as one matmul: (M,h,w,Cin) -> (M,2h,2w,Cout).
pub(crate) struct ConvTranspose2x2 {
    weight: Tensor, // (Cin, Cout*4)
    /// The weight with columns ordered (dy, dx, cout): the fast path's layout.
    weight_taps: Tensor,
    bias: Tensor, // (Cout)
    out: usize,
}

impl ConvTranspose2x2 {
    pub(crate) fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb
            .get((cin, cout, 2, 2), "weight")?
            .reshape((cin, cout * 4))?;
        let bias = vb.get(cout, "bias")?;
        let weight_taps = weight
            .reshape((cin, cout, 4))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((cin, 4 * cout))?;
        Ok(Self {
            weight,
            weight_taps,
            bias,
            out: cout,
        })
    }

    /// Fast path: x (M*h*w, Cin) channels-last rows -> (M*h*w, 4*Cout) with columns
    /// (dy, dx, cout), no bias: output pixel (2i+dy, 2j+dx) of input pixel (i, j).
    pub(crate) fn taps(&self, x: &[f32]) -> Result<Vec<f32>> {
        let (cin, n) = self.weight_taps.dims2()?;
        let rows = x.len() / cin;
        let w = crate::ops::F32Slice::new(&self.weight_taps)?;
        let mut y = vec![0f32; rows * n];
        let (x, w) = (Mat::dense(x, rows, cin), Mat::dense(&w, cin, n));
        crate::ops::gemm::par_gemm(1.0, x, w, 0.0, &mut y, n);
        Ok(y)
    }

    /// Output channels.
    pub(crate) fn out_channels(&self) -> usize {
        self.out
    }

    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub(crate) fn weight_taps(&self) -> &Tensor {
        &self.weight_taps
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, h, w, _) = x.dims4()?;
        let y = crate::ops::matmul(x, &self.weight)?;
        // (m,h,w,cout,2,2) -> (m,h,2,w,2,cout)
        let y = y
            .reshape((m, h, w, self.out, 2, 2))?
            .permute((0, 1, 4, 2, 5, 3))?
            .reshape((m, 2 * h, 2 * w, self.out))?;
        y.broadcast_add(&self.bias)
    }
}

/// SAM's `SamFeedForward`: proj_in, ReLU, (hidden layers, ReLU)*, proj_out.
pub(crate) struct FeedForward {
    proj_in: QLinear,
    layers: Vec<QLinear>,
    proj_out: QLinear,
}

impl FeedForward {
    pub(crate) fn new(
        input: usize,
        hidden: usize,
        output: usize,
        num_layers: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let proj_in = linear(input, hidden, vb.pp("proj_in"))?;
        let layers = (0..num_layers.saturating_sub(2))
            .map(|i| linear(hidden, hidden, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let proj_out = linear(hidden, output, vb.pp("proj_out"))?;
        Ok(Self {
            proj_in,
            layers,
            proj_out,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.proj_in.forward(x)?.relu()?;
        for l in &self.layers {
            x = l.forward(&x)?.relu()?;
        }
        self.proj_out.forward(&x)
    }
}
