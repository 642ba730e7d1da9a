//! The SCA text feature mixer: learned caption queries (`mask_decoder.caption_tokens`), a second
//! two-way transformer (`mask_decoder.additional_transformer`), `language_project` to the LM
//! width, and the task-token prefix (`task_tokens`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::ScaConfig;
use crate::ops::QLinear;
use crate::sam::two_way_transformer::TwoWayTransformer;
use crate::trace::Trace;

/// Task ids of the official model; rows `6t..6t+5` of `task_tokens` belong to task `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    Recognition = 0,
    #[default]
    Caption = 1,
}

pub struct Mixer {
    caption_tokens: Tensor, // (Q, C)
    transformer: TwoWayTransformer,
    language_project: QLinear,
    task_tokens: Tensor, // (2*Tt, D)
    num_task_tokens: usize,
}

impl Mixer {
    /// `vb` is the root builder: weights live under `mask_decoder.*` and at the top level.
    pub fn new(cfg: &ScaConfig, vb: VarBuilder) -> Result<Self> {
        let m = &cfg.mask_caption_decoder_config;
        let c = m.hidden_size;
        let d = cfg.text_config.n_embd;
        let q = m.num_caption_tokens * m.num_caption_heads;
        let md = vb.pp("mask_decoder");
        Ok(Self {
            caption_tokens: md.pp("caption_tokens").get((q, c), "weight")?,
            transformer: TwoWayTransformer::new(
                m,
                m.additional_num_hidden_layers,
                md.pp("additional_transformer"),
            )?,
            language_project: QLinear::new(c, d, vb.pp("language_project"))?,
            task_tokens: vb
                .pp("task_tokens")
                .get((2 * cfg.num_task_tokens, d), "weight")?,
            num_task_tokens: cfg.num_task_tokens,
        })
    }

    /// SAM decoder output tokens (M, T', C) and image tokens (M, g*g, C), image PE (1, g*g, C)
    /// -> caption query outputs (M, Q, C).
    pub fn forward(
        &self,
        queries_out: &Tensor,
        keys_out: &Tensor,
        image_pe_tokens: &Tensor,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let (m, _, c) = queries_out.dims3()?;
        let q = self.caption_tokens.dim(0)?;
        let cap = self.caption_tokens.unsqueeze(0)?.broadcast_as((m, q, c))?;
        let tokens = Tensor::cat(&[&cap, queries_out], 1)?.contiguous()?;
        trace.record("mixer_queries_in", &tokens);
        let (out, keys) =
            self.transformer
                .forward(&tokens, keys_out, image_pe_tokens, "mixer", trace)?;
        trace.record("mixer_queries_out", &out);
        trace.record("mixer_keys_out", &keys);
        let out = out.narrow(1, 0, q)?.contiguous()?;
        trace.record("caption_query_outputs", &out);
        Ok(out)
    }

    /// Caption query outputs (M, Q, C) -> LM prefix (M, Tt+Q, D) = [task tokens ; projected].
    pub fn prefix(
        &self,
        caption_queries: &Tensor,
        task: Task,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let projected = self.language_project.forward(caption_queries)?;
        trace.record("language_project_output", &projected);
        let m = projected.dim(0)?;
        let d = projected.dim(2)?;
        let task_tokens = self.task_tokens(task)?;
        trace.record("task_tokens_caption", &task_tokens);
        let tt = task_tokens
            .unsqueeze(0)?
            .broadcast_as((m, self.num_task_tokens, d))?;
        let prefix = Tensor::cat(&[&tt, &projected], 1)?.contiguous()?;
        trace.record("lm_prefix_embeds", &prefix);
        Ok(prefix)
    }

    /// The `num_task_tokens` rows of one task: (Tt, D).
    pub fn task_tokens(&self, task: Task) -> Result<Tensor> {
        self.task_tokens.narrow(
            0,
            task as usize * self.num_task_tokens,
            self.num_task_tokens,
        )
    }
}
