//! ONNX export of the SAM ViT image encoder (`vision_encoder.*`), opset 17.
//!
//! Graph: `pixel_values` (B,3,S,S) -> `image_embeddings` (B,C_out,S/p,S/p), batch dynamic. The
//! checkpoint's tensors become initializers under their official key names (as f32); everything
//! derived from them (transposed Linear weights, gathered relative-position tables) is computed
//! by nodes on constant inputs, which ONNX Runtime folds once at session creation.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use prost::Message;
use sca_core::config::{ScaConfig, VisionConfig};
use sca_core::weights::Weights;

use crate::onnx_proto::{
    attr_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto, DATA_LOCATION_EXTERNAL, DATA_TYPE_FLOAT, DATA_TYPE_INT64,
};
use crate::ExportError;

/// The default-domain opset the graph targets (LayerNormalization needs 17).
pub const OPSET: i64 = 17;
/// IR version matching opset 17 (ONNX 1.12).
pub const IR_VERSION: i64 = 8;
/// Name of the graph input.
pub const INPUT_NAME: &str = "pixel_values";
/// Name of the graph output.
pub const OUTPUT_NAME: &str = "image_embeddings";
/// Symbolic name of the dynamic batch axis.
pub const BATCH_DIM: &str = "batch";
/// A serialized protobuf message may not exceed 2 GiB.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// Initializers at least this large move to the external data file when one is written.
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Offsets in the external data file are multiples of this (memory-mapping friendly).
const EXTERNAL_ALIGN: usize = 4096;

/// How to write the model.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnnxOptions {
    /// Always keep the weights in `<out>.data` next to the model (ONNX external data). They go
    /// there anyway when a single file would exceed protobuf's 2 GiB limit (SAM ViT-H).
    pub external_data: bool,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct OnnxSummary {
    /// The model file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The external weight file, when one was written, and its size in bytes.
    pub external_data: Option<(PathBuf, u64)>,
    /// Number of graph nodes.
    pub nodes: usize,
    /// Number of initializers.
    pub initializers: usize,
}

/// [`export_onnx_with`] with default options.
pub fn export_onnx(dir: &Path, out: &Path) -> Result<OnnxSummary, ExportError> {
    export_onnx_with(dir, out, &OnnxOptions::default())
}

/// Reads `dir/config.json` and the checkpoint in `dir` (any layout [`Weights::load`] reads),
/// builds the encoder graph and writes it atomically to `out` (and `<out>.data` with external
/// data).
pub fn export_onnx_with(
    dir: &Path,
    out: &Path,
    opts: &OnnxOptions,
) -> Result<OnnxSummary, ExportError> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(ExportError::Input {
            path: cfg_path,
            msg: "missing: the checkpoint directory needs config.json".into(),
        });
    }
    let cfg = ScaConfig::from_file(&cfg_path)?;
    let weights = Weights::load(dir)?;
    write_onnx(&cfg.vision_config, &weights, out, opts)
}

/// Builds the encoder graph from already-loaded `weights` and writes it atomically to `out`
/// (and `<out>.data` with external data).
pub fn write_onnx(
    cfg: &VisionConfig,
    weights: &Weights,
    out: &Path,
    opts: &OnnxOptions,
) -> Result<OnnxSummary, ExportError> {
    let mut model = build_encoder_model(cfg, weights)?;
    let (nodes, initializers) = model
        .graph
        .as_ref()
        .map_or((0, 0), |g| (g.node.len(), g.initializer.len()));
    let external = if opts.external_data || model.encoded_len() > PROTOBUF_LIMIT {
        let file_name = out
            .file_name()
            .ok_or_else(|| ExportError::Input {
                path: out.to_path_buf(),
                msg: "the output path has no file name".into(),
            })?
            .to_string_lossy();
        let data_name = format!("{file_name}.data");
        let data = externalize(&mut model, &data_name);
        Some((out.with_file_name(&data_name), data))
    } else {
        None
    };
    let bytes = model.encoded_len();
    if bytes > PROTOBUF_LIMIT {
        return Err(ExportError::Input {
            path: out.to_path_buf(),
            msg: format!("the encoder graph is {bytes} bytes, over protobuf's 2 GiB limit"),
        });
    }
    let external_data = match &external {
        Some((path, data)) => {
            crate::write_atomic(path, data)?;
            Some((path.clone(), data.len() as u64))
        }
        None => None,
    };
    if let Err(e) = crate::write_atomic(out, &model.encode_to_vec()) {
        // No half export: the weights file is useless without its model.
        if let Some((path, _)) = &external_data {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(OnnxSummary {
        path: out.to_path_buf(),
        bytes: bytes as u64,
        external_data,
        nodes,
        initializers,
    })
}

/// Moves large initializers' bytes into one buffer (the `location` file, relative to the model)
/// and points the tensors at it; returns the buffer.
fn externalize(model: &mut ModelProto, location: &str) -> Vec<u8> {
    let mut data = Vec::new();
    let Some(graph) = model.graph.as_mut() else {
        return data;
    };
    for t in graph
        .initializer
        .iter_mut()
        .filter(|t| t.raw_data.len() >= EXTERNAL_MIN_BYTES)
    {
        let offset = data.len().next_multiple_of(EXTERNAL_ALIGN);
        data.resize(offset, 0);
        let raw = std::mem::take(&mut t.raw_data);
        data.extend_from_slice(&raw);
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.into(),
            value,
        };
        t.external_data = vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = DATA_LOCATION_EXTERNAL;
    }
    data
}

/// Builds the ONNX model of the image encoder described by `cfg` from `weights`
/// (keys `vision_encoder.*`). Missing or mis-shaped tensors are errors naming the key.
pub fn build_encoder_model(
    cfg: &VisionConfig,
    weights: &Weights,
) -> Result<ModelProto, ExportError> {
    if cfg.hidden_act != "gelu" {
        return Err(ExportError::Unsupported(format!(
            "vision_config.hidden_act `{}` (only the exact `gelu`)",
            cfg.hidden_act
        )));
    }
    if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(ExportError::Unsupported(format!(
            "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    let mut g = GraphBuilder::new(weights);
    let x = encoder(&mut g, cfg)?;
    let s = cfg.image_size as i64;
    let grid = cfg.grid_size() as i64;
    let graph = GraphProto {
        node: g.nodes,
        name: "sam_vision_encoder".into(),
        initializer: g.initializers,
        doc_string: "SAM ViT image encoder of an SCA checkpoint".into(),
        input: vec![value_info(
            INPUT_NAME,
            &[None, Some(cfg.num_channels as i64), Some(s), Some(s)],
        )],
        output: vec![value_info(
            &x,
            &[
                None,
                Some(cfg.output_channels as i64),
                Some(grid),
                Some(grid),
            ],
        )],
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        producer_name: "sca-export".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: String::new(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
    })
}

/// A float tensor type whose `None` axes are the symbolic batch.
fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(v) => Dimension {
                dim_value: Some(*v),
                dim_param: None,
            },
            None => Dimension {
                dim_value: None,
                dim_param: Some(BATCH_DIM.into()),
            },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: DATA_TYPE_FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: attr_type::INT,
        ..Default::default()
    }
}

fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: attr_type::FLOAT,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: attr_type::INTS,
        ..Default::default()
    }
}

fn attr_s(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        s: s.as_bytes().to_vec(),
        r#type: attr_type::STRING,
        ..Default::default()
    }
}

/// Accumulates nodes and initializers; generates unique value names.
struct GraphBuilder<'w> {
    weights: &'w Weights,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl<'w> GraphBuilder<'w> {
    fn new(weights: &'w Weights) -> Self {
        Self {
            weights,
            nodes: Vec::new(),
            initializers: Vec::new(),
            counter: 0,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a one-output node and returns its output name.
    fn op(&mut self, op_type: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(op_type);
        self.op_to(op_type, inputs, attribute, &out);
        out
    }

    fn op_to(&mut self, op_type: &str, inputs: &[&str], attribute: Vec<AttributeProto>, out: &str) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: format!("{op_type}_node_{}", self.nodes.len()),
            op_type: op_type.into(),
            attribute,
            domain: String::new(),
        });
    }

    /// The checkpoint tensor `key` as an f32 initializer of shape `dims`; returns its name.
    fn weight(&mut self, key: &str, dims: &[usize]) -> Result<String, ExportError> {
        let source = self.weights.source().to_path_buf();
        let t = self.weights.get(key).ok_or_else(|| ExportError::Weights {
            path: source.clone(),
            msg: format!("missing tensor `{key}`"),
        })?;
        if t.dims() != dims {
            return Err(ExportError::Weights {
                path: source,
                msg: format!("tensor `{key}` has shape {:?}, expected {dims:?}", t.dims()),
            });
        }
        let data = tensor_f32(t).map_err(|e| ExportError::Weights {
            path: source,
            msg: format!("tensor `{key}`: {e}"),
        })?;
        self.push_f32(key, dims, &data);
        Ok(key.to_string())
    }

    fn push_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DATA_TYPE_FLOAT,
            name: name.into(),
            raw_data,
            ..Default::default()
        });
    }

    /// A scalar f32 constant.
    fn scalar(&mut self, v: f32) -> String {
        let name = self.fresh("const_f32");
        self.push_f32(&name, &[], &[v]);
        name
    }

    /// An int64 constant of shape `dims` (`[]` for a scalar).
    fn ints(&mut self, dims: &[usize], vals: &[i64]) -> String {
        let name = self.fresh("const_i64");
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DATA_TYPE_INT64,
            name: name.clone(),
            raw_data: vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A 1-D int64 constant (shapes, pads, axes).
    fn ints1(&mut self, vals: &[i64]) -> String {
        self.ints(&[vals.len()], vals)
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.ints1(shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }

    /// PyTorch `Linear` over the last axis: `x @ W^T + b` with W (out, in) as stored.
    fn linear(
        &mut self,
        x: &str,
        prefix: &str,
        (din, dout): (usize, usize),
        bias: bool,
    ) -> Result<String, ExportError> {
        let w = self.weight(&format!("{prefix}.weight"), &[dout, din])?;
        let wt = self.transpose(&w, &[1, 0]);
        let y = self.op("MatMul", &[x, &wt], vec![]);
        if bias {
            let b = self.weight(&format!("{prefix}.bias"), &[dout])?;
            Ok(self.op("Add", &[&y, &b], vec![]))
        } else {
            Ok(y)
        }
    }

    /// LayerNormalization over the last axis with the checkpoint's affine parameters.
    fn layer_norm(
        &mut self,
        x: &str,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<String, ExportError> {
        let w = self.weight(&format!("{prefix}.weight"), &[dim])?;
        let b = self.weight(&format!("{prefix}.bias"), &[dim])?;
        Ok(self.op(
            "LayerNormalization",
            &[x, &w, &b],
            vec![attr_i("axis", -1), attr_f("epsilon", eps as f32)],
        ))
    }

    /// Exact (erf) GELU: `0.5 * x * (1 + erf(x / sqrt 2))` (the Gelu op needs opset 20).
    fn gelu(&mut self, x: &str) -> String {
        let inv_sqrt2 = self.scalar(std::f32::consts::FRAC_1_SQRT_2);
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let t = self.op("Mul", &[x, &inv_sqrt2], vec![]);
        let t = self.op("Erf", &[&t], vec![]);
        let t = self.op("Add", &[&t, &one], vec![]);
        let hx = self.op("Mul", &[x, &half], vec![]);
        self.op("Mul", &[&hx, &t], vec![])
    }
}

fn tensor_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// The whole encoder; returns the output value name ([`OUTPUT_NAME`]).
fn encoder(g: &mut GraphBuilder, cfg: &VisionConfig) -> Result<String, ExportError> {
    let (c, p, cin) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
    let grid = cfg.grid_size();
    let pe = "vision_encoder.patch_embed.projection";
    let w = g.weight(&format!("{pe}.weight"), &[c, cin, p, p])?;
    let b = g.weight(&format!("{pe}.bias"), &[c])?;
    let pi = p as i64;
    let x = g.op(
        "Conv",
        &[INPUT_NAME, &w, &b],
        vec![
            attr_ints("kernel_shape", &[pi, pi]),
            attr_ints("strides", &[pi, pi]),
        ],
    );
    let mut x = g.transpose(&x, &[0, 2, 3, 1]); // channels-last (B, g, g, C)
    if cfg.use_abs_pos {
        let pos = g.weight("vision_encoder.pos_embed", &[1, grid, grid, c])?;
        x = g.op("Add", &[&x, &pos], vec![]);
    }
    for i in 0..cfg.num_hidden_layers {
        let ws = if cfg.global_attn_indexes.contains(&i) {
            0
        } else {
            cfg.window_size
        };
        x = block(g, cfg, &x, i, ws)?;
    }
    neck(g, cfg, &x)
}

/// One pre-norm transformer block on (B, g, g, C); `ws == 0` means global attention.
fn block(
    g: &mut GraphBuilder,
    cfg: &VisionConfig,
    x: &str,
    i: usize,
    ws: usize,
) -> Result<String, ExportError> {
    let prefix = format!("vision_encoder.layers.{i}");
    let (c, grid) = (cfg.hidden_size, cfg.grid_size());
    let y = g.layer_norm(x, &format!("{prefix}.layer_norm1"), c, cfg.layer_norm_eps)?;
    let y = if ws > 0 {
        let pad = (ws - grid % ws) % ws;
        let gp = grid + pad;
        let nw = (gp / ws) as i64;
        let (wsi, ci) = (ws as i64, c as i64);
        // Zero-pad bottom/right after the norm, then split into windows (window-major order).
        let padded = if pad > 0 {
            let pads = g.ints1(&[0, 0, 0, 0, 0, pad as i64, pad as i64, 0]);
            g.op("Pad", &[&y, &pads], vec![attr_s("mode", "constant")])
        } else {
            y
        };
        let t = g.reshape(&padded, &[-1, nw, wsi, nw, wsi, ci]);
        let t = g.transpose(&t, &[0, 1, 3, 2, 4, 5]);
        let windows = g.reshape(&t, &[-1, wsi, wsi, ci]);
        let a = attention(g, cfg, &windows, &prefix, ws)?;
        let t = g.reshape(&a, &[-1, nw, nw, wsi, wsi, ci]);
        let t = g.transpose(&t, &[0, 1, 3, 2, 4, 5]);
        let t = g.reshape(&t, &[-1, gp as i64, gp as i64, ci]);
        if pad > 0 {
            let starts = g.ints1(&[0, 0]);
            let ends = g.ints1(&[grid as i64, grid as i64]);
            let axes = g.ints1(&[1, 2]);
            g.op("Slice", &[&t, &starts, &ends, &axes], vec![])
        } else {
            t
        }
    } else {
        attention(g, cfg, &y, &prefix, grid)?
    };
    let x = g.op("Add", &[x, &y], vec![]);
    let y = g.layer_norm(&x, &format!("{prefix}.layer_norm2"), c, cfg.layer_norm_eps)?;
    let y = g.linear(&y, &format!("{prefix}.mlp.lin1"), (c, cfg.mlp_dim), true)?;
    let y = g.gelu(&y);
    let y = g.linear(&y, &format!("{prefix}.mlp.lin2"), (cfg.mlp_dim, c), true)?;
    Ok(g.op("Add", &[&x, &y], vec![]))
}

/// Multi-head attention with decomposed relative-position bias on (N, s, s, C) -> (N, s, s, C).
fn attention(
    g: &mut GraphBuilder,
    cfg: &VisionConfig,
    x: &str,
    prefix: &str,
    s: usize,
) -> Result<String, ExportError> {
    let c = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    let hd = c / nh;
    let (si, nhi, hdi) = (s as i64, nh as i64, hd as i64);
    let attn = format!("{prefix}.attn");
    let qkv = g.linear(x, &format!("{attn}.qkv"), (c, 3 * c), cfg.qkv_bias)?;
    // Channels are [q|k|v] x head x hd -> (3, N, nh, s*s, hd).
    let t = g.reshape(&qkv, &[-1, si * si, 3, nhi, hdi]);
    let t = g.transpose(&t, &[2, 0, 3, 1, 4]);
    let mut qkv_parts = Vec::with_capacity(3);
    for k in 0..3 {
        let idx = g.ints(&[], &[k]);
        qkv_parts.push(g.op("Gather", &[&t, &idx], vec![attr_i("axis", 0)]));
    }
    let (q, k, v) = (&qkv_parts[0], &qkv_parts[1], &qkv_parts[2]);
    let scale = g.scalar((hd as f64).powf(-0.5) as f32);
    let qs = g.op("Mul", &[q, &scale], vec![]);
    let kt = g.transpose(k, &[0, 1, 3, 2]);
    let mut scores = g.op("MatMul", &[&qs, &kt], vec![]); // (N, nh, s*s, s*s)
    if cfg.use_rel_pos {
        // R[a, b] = table[a - b + s - 1]: a constant gather of the official table.
        let idx: Vec<i64> = (0..s)
            .flat_map(|a| (0..s).map(move |b| (a + s - 1 - b) as i64))
            .collect();
        let idx = g.ints(&[s, s], &idx);
        let th = g.weight(&format!("{attn}.rel_pos_h"), &[2 * s - 1, hd])?;
        let tw = g.weight(&format!("{attn}.rel_pos_w"), &[2 * s - 1, hd])?;
        let rh = g.op("Gather", &[&th, &idx], vec![attr_i("axis", 0)]); // (s, s, hd)
        let rw = g.op("Gather", &[&tw, &idx], vec![attr_i("axis", 0)]);
        // The unscaled query: rel_h[n,a,i,j,k] = q[n,a,i,j,:]·Rh[i,k,:], likewise rel_w over j.
        let q5 = g.reshape(q, &[-1, nhi, si, si, hdi]);
        let rel_h = g.op(
            "Einsum",
            &[&q5, &rh],
            vec![attr_s("equation", "nahwc,hkc->nahwk")],
        );
        let rel_w = g.op(
            "Einsum",
            &[&q5, &rw],
            vec![attr_s("equation", "nahwc,wlc->nahwl")],
        );
        let ax_last = g.ints1(&[-1]);
        let ax_before = g.ints1(&[-2]);
        let rel_h = g.op("Unsqueeze", &[&rel_h, &ax_last], vec![]); // (.., k, 1)
        let rel_w = g.op("Unsqueeze", &[&rel_w, &ax_before], vec![]); // (.., 1, l)
        let bias = g.op("Add", &[&rel_h, &rel_w], vec![]);
        let bias = g.reshape(&bias, &[-1, nhi, si * si, si * si]);
        scores = g.op("Add", &[&scores, &bias], vec![]);
    }
    let probs = g.op("Softmax", &[&scores], vec![attr_i("axis", -1)]);
    let out = g.op("MatMul", &[&probs, v], vec![]); // (N, nh, s*s, hd)
    let out = g.transpose(&out, &[0, 2, 1, 3]);
    let out = g.reshape(&out, &[-1, si, si, c as i64]);
    g.linear(&out, &format!("{attn}.proj"), (c, c), true)
}

/// Neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d; (B,g,g,C) -> (B,C_out,g,g).
fn neck(g: &mut GraphBuilder, cfg: &VisionConfig, x: &str) -> Result<String, ExportError> {
    let (c, co) = (cfg.hidden_size, cfg.output_channels);
    let eps = cfg.layer_norm_eps;
    let x = g.transpose(x, &[0, 3, 1, 2]);
    let w1 = g.weight("vision_encoder.neck.conv1.weight", &[co, c, 1, 1])?;
    let y = g.op("Conv", &[&x, &w1], vec![attr_ints("kernel_shape", &[1, 1])]);
    // LayerNorm2d = LayerNormalization over channels of the channels-last map.
    let y = g.transpose(&y, &[0, 2, 3, 1]);
    let y = g.layer_norm(&y, "vision_encoder.neck.layer_norm1", co, eps)?;
    let y = g.transpose(&y, &[0, 3, 1, 2]);
    let w2 = g.weight("vision_encoder.neck.conv2.weight", &[co, co, 3, 3])?;
    let y = g.op(
        "Conv",
        &[&y, &w2],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let y = g.transpose(&y, &[0, 2, 3, 1]);
    let y = g.layer_norm(&y, "vision_encoder.neck.layer_norm2", co, eps)?;
    g.op_to(
        "Transpose",
        &[&y],
        vec![attr_ints("perm", &[0, 3, 1, 2])],
        OUTPUT_NAME,
    );
    Ok(OUTPUT_NAME.to_string())
}
