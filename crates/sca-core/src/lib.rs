//! Segment and Caption Anything (SCA) in candle: SAM image encoder, prompt encoder and mask
//! decoder, the caption feature mixer, and GPT-2, with loaders for the official checkpoints.
//!
//! The entry point is [`Sca`]: load a checkpoint, [`Sca::embed`] an image once, then
//! [`Sca::predict`] masks and a caption for each prompt.

pub mod anything;
pub mod bundle;
pub mod config;
pub mod dropout;
pub mod error;
pub mod generate;
pub mod gpt2;
pub mod image;
pub mod masks;
pub mod mixer;
pub mod ops;
pub mod pipeline;
pub mod sam;
pub mod tokenizer;
pub mod trace;
pub mod weights;
pub mod wire;

pub use error::{Error, Result};
pub use generate::Decode;
pub use pipeline::{
    caption_loss, ImageEmbedding, Mask, Point, Prompt, Region, Sca, ScaModel, Segmented,
};
pub use trace::Trace;
