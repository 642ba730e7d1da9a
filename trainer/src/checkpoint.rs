//! Atomic checkpoints: `OUT/checkpoint-STEP/` holds the model in the official layout (so
//! `Sca::load` reads it), `optimizer.safetensors` (AdamW moments) and `trainer_state.json`
//! (step, data-loader position, seeds). A checkpoint is written into a temporary directory,
//! synced, and renamed into place; a run killed at any moment leaves the previous checkpoints
//! intact, and `checkpoint-*` directories are always complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sca_data::LoaderState;
use serde::{Deserialize, Serialize};

use crate::model::{save_safetensors, write_model_dir, ModelFiles};
use crate::{Error, Result};

/// Test hook, `STEP:MILLISECONDS`: while writing the checkpoint of step STEP, sleep after the
/// weights are written and before the checkpoint is renamed into place (lets a test kill the
/// process mid-checkpoint).
pub const PAUSE_ENV: &str = "SCA_TRAINER_CHECKPOINT_PAUSE";

/// File of the run state inside a checkpoint (written last).
pub const STATE_FILE: &str = "trainer_state.json";

/// What besides the weights a checkpoint records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// The data loader after the last batch used.
    pub loader: LoaderState,
    /// Dropout seed (`train.seed`).
    pub seed: u64,
    /// The trainable set the optimizer state belongs to.
    pub trainable: String,
    /// Data-parallel workers of the run.
    pub world_size: usize,
    /// Regions trained on so far (all workers).
    pub regions_seen: u64,
}

fn sync_path(p: &Path) -> Result<()> {
    let f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
    f.sync_all().map_err(|e| Error::io(p, e))
}

/// Writes `out/checkpoint-{step}` atomically and deletes the oldest beyond `keep`.
pub fn write_checkpoint(
    out: &Path,
    tensors: &BTreeMap<String, Tensor>,
    files: &ModelFiles,
    optimizer: &BTreeMap<String, Tensor>,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("checkpoint-{}", state.step);
    let tmp = out.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write_model_dir(&tmp, tensors, files)?;
    save_safetensors(&tmp.join("optimizer.safetensors"), optimizer)?;
    if let Ok(v) = std::env::var(PAUSE_ENV) {
        if let Some((at, ms)) = v.split_once(':') {
            if at.parse::<u64>().ok() == Some(state.step) {
                let ms = ms.parse::<u64>().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&state_path, text).map_err(|e| Error::io(&state_path, e))?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
        let p = entry.map_err(|e| Error::io(&tmp, e))?.path();
        sync_path(&p)?;
    }
    sync_path(&tmp)?;
    let dst = out.join(&name);
    if dst.exists() {
        // A resumed run re-writing a step it already saved: replace it.
        let old = out.join(format!(".old-{name}-{}", std::process::id()));
        std::fs::rename(&dst, &old).map_err(|e| Error::io(&dst, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    sync_path(out)?;
    prune(out, keep)?;
    Ok(dst)
}

/// `(step, path)` of every complete checkpoint in `out`, oldest first.
pub fn list_checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    if !out.is_dir() {
        return Ok(v);
    }
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let p = entry.map_err(|e| Error::io(out, e))?.path();
        let Some(step) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if p.join(STATE_FILE).is_file() {
            v.push((step, p));
        }
    }
    v.sort();
    Ok(v)
}

fn prune(out: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(out)?;
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

/// Removes temporary directories a killed run left behind.
pub fn clean_stale(out: &Path) -> Result<()> {
    if !out.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let p = entry.map_err(|e| Error::io(out, e))?.path();
        let stale = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with(".tmp-checkpoint-")
                || n.starts_with(".old-checkpoint-")
                || n.starts_with(".tmp-model-")
        });
        if stale && p.is_dir() {
            tracing::info!(dir = %p.display(), "removing an incomplete checkpoint");
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// The checkpoint to resume from: `path` itself when it is a checkpoint, else the newest
/// complete `checkpoint-*` inside it.
pub fn resolve_resume(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    list_checkpoints(path)?
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("no complete checkpoint (a checkpoint-N directory with {STATE_FILE})"),
        })
}

/// Reads a checkpoint's run state and optimizer moments.
pub fn read_state(ckpt: &Path) -> Result<(TrainerState, BTreeMap<String, Tensor>)> {
    let sp = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: sp.clone(),
        msg: e.to_string(),
    })?;
    let op = ckpt.join("optimizer.safetensors");
    let opt = candle_core::safetensors::load(&op, &Device::Cpu).map_err(|e| Error::Checkpoint {
        path: op.clone(),
        msg: e.to_string(),
    })?;
    Ok((state, opt.into_iter().collect()))
}
