//! Data for Segment and Caption Anything: readers of region-caption datasets, a deterministic
//! synthetic scene generator, the official large-scale-jitter augmentation, and the
//! region-sampling batch loader the trainer consumes.
//!
//! - [`Dataset`]: random access to [`Sample`]s (an image and its [`Region`]s: box, caption,
//!   all reference phrasings, optional mask and attributes). Readers:
//!   [`vg::VgDataset`] (Visual Genome + DenseCap splits), [`coco::CocoDataset`] (COCO
//!   instances), [`coco::RefCocoDataset`] (RefCOCO/+/g), [`jsonl::JsonlDataset`] (our JSONL),
//!   [`synthetic::SyntheticDataset`] (generated scenes). [`spec::open_spec`] builds any of them
//!   from a command-line spec such as `vg:DIR`, `jsonl:FILE`, `coco:ANN.json,IMAGES`,
//!   `synthetic:seed=1,n=1000`.
//! - [`lsj`]: detectron2 flip → `ResizeScale` → `FixedSizeCrop` exactly as the official
//!   recipe (`sca-spec.md` §4.4), for images, boxes and masks.
//! - [`DataLoader`]: per-image region sampling (random permutation, 16 regions), collation to
//!   the smallest region count, tokenized captions, SAM-preprocessed pixels; deterministic in
//!   `(seed, epoch, position)` and resumable through [`LoaderState`].
//!
//! Evaluation (`sca eval`) iterates a dataset directly: every region's
//! [`Region::prompt_xyxy`] is the box prompt (in original-image pixels), [`Region::references`] the references, and on
//! synthetic data [`synthetic::attribute_agreement`] checks colour/shape/size words.
//!
//! ```
//! use sca_data::{open_spec, Dataset, Split};
//! use sca_data::synthetic::attribute_agreement;
//!
//! let ds = open_spec("synthetic:seed=2,n=3,size=96", Split::Test)?;
//! for i in 0..ds.len() {
//!     let sample = ds.get(i)?;
//!     let image = sample.load_image()?; // RGB, sample.width x sample.height
//!     assert_eq!(image.width() as usize, sample.width);
//!     for region in &sample.regions {
//!         let prompt = region.prompt_xyxy(sample.width, sample.height);
//!         assert!(prompt[2] > prompt[0] && prompt[2] <= sample.width as f32);
//!         // A model's caption would be scored against `region.references`; every phrasing
//!         // names the true colour and shape:
//!         let truth = region.attributes.as_ref().unwrap();
//!         let agree = attribute_agreement(&region.caption, truth);
//!         assert!(agree.colour && agree.shape);
//!     }
//! }
//! # Ok::<(), sca_data::Error>(())
//! ```

#![warn(missing_docs)]

pub mod coco;
pub mod cocomask;
mod error;
pub mod jsonl;
pub mod loader;
pub mod lsj;
pub mod rng;
pub mod spec;
pub mod synthetic;
mod types;
pub mod vg;

pub use error::{Error, Result};
pub use loader::{Batch, CaptionChoice, DataLoader, LoaderConfig, LoaderState};
pub use lsj::{LsjConfig, LsjTransform};
pub use spec::{open_spec, parse_spec, DataSource, DataSpec};
pub use types::{
    box_nonempty, clamp_box_xyxy, probe_image_size, Attributes, Dataset, ImageSource, Region,
    Sample, Take, VecDataset,
};
pub use vg::Split;
