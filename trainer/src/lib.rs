//! Training for Segment and Caption Anything in candle: the official recipe (`sca-spec.md`
//! §4) for the caption mixer, optionally with GPT-2 and SAM's decoder (or everything), on any
//! dataset `sca-data` reads.
//!
//! The binary `trainer` drives it (`trainer fit --config FILE.toml --out DIR`); the library
//! exposes the parts for tests and for `sca eval`:
//! [`config`] (the TOML file), [`params`] (trainable sets, init, `Var`s), [`optim`] (AdamW,
//! schedule, clipping), [`grad_sync`] (data-parallel gradient averaging), [`step`] (loss and
//! gradients), [`checkpoint`] (atomic checkpoints), [`train`] (the loop), [`evaluate`]
//! (region-captioning evaluation), [`bench`] (throughput).

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod distill;
mod error;
pub mod evaluate;
pub mod grad_sync;
pub mod losses;
pub mod model;
pub mod optim;
pub mod params;
pub mod pixel_aux;
pub mod rng;
pub mod step;
pub mod train;

pub use error::{Error, Result};
