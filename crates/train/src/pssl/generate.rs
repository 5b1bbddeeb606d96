//! Label generation: explain every image with every model of the ensemble, take the consensus,
//! quantise it into deciles and write one label PNG per image ([`super::labels`]).
//!
//! Resumable: an image whose label already exists is skipped, and every label is written
//! atomically, so a run killed at any point and started again writes the same files as one
//! uninterrupted run (each image's noise is keyed by its name and the model's index, never by
//! order or thread). Parallel over images (rayon).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use segkit_core::checkpoint::{self, StateDict};
use segkit_models::classifier::{Classifier, ClassifierConfig};
use segkit_models::ModelConfig;

use super::consensus::{consensus, deciles};
use super::explain::{reduce_channels, ChannelReduce, Explainer};
use super::labels::PsslLabel;
use crate::{TrainError, TrainResult};

fn bad(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    segkit_core::Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
    .into()
}

/// Loads a classifier directory (`config.json` with `"type": "Classifier"` +
/// `model.safetensors`) as written by segkit's training.
pub fn load_classifier(dir: &Path, device: &Device) -> TrainResult<Classifier> {
    let cfg_path = dir.join("config.json");
    let cfg = match ModelConfig::from_file(&cfg_path)? {
        ModelConfig::Classifier(c) => *c,
        other => {
            return Err(bad(
                &cfg_path,
                format!(
                    "a classifier (\"type\": \"Classifier\") expected, got {}",
                    other.type_name()
                ),
            ))
        }
    };
    let weights = dir.join("model.safetensors");
    let sd = StateDict::load(&weights).map_err(|e| bad(&weights, e))?;
    load_classifier_from(&cfg, &sd, &weights, device)
}

/// Builds `cfg` from a state dict, strictly (every key used).
pub fn load_classifier_from(
    cfg: &ClassifierConfig,
    sd: &StateDict,
    path: &Path,
    device: &Device,
) -> TrainResult<Classifier> {
    checkpoint::load_model(sd, DType::F32, device, |vb| Classifier::new(cfg, vb))
        .map_err(|e: segkit_models::Error| bad(path, e))
}

/// One image to label: its file, its name (relative to the image directory) and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelJob {
    /// The image file.
    pub image: PathBuf,
    /// Its name relative to the image directory (the label is `out/<name without ext>.png`;
    /// also the noise key).
    pub name: String,
    /// The class id.
    pub class: u32,
}

/// Reads a labels file: one `NAME CLASS` per line (name relative to `images`; blank lines and
/// `#` comments skipped). Errors name the file and line.
pub fn read_jobs(labels: &Path, images: &Path) -> TrainResult<Vec<LabelJob>> {
    let text = std::fs::read_to_string(labels).map_err(|e| bad(labels, e))?;
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.rsplitn(2, char::is_whitespace);
        let (class, name) = (it.next(), it.next().map(str::trim));
        let (Some(class), Some(name)) = (class, name) else {
            return Err(bad(
                labels,
                format!("line {}: `NAME CLASS` expected", i + 1),
            ));
        };
        let class = class
            .parse::<u32>()
            .map_err(|e| bad(labels, format!("line {}: class `{class}`: {e}", i + 1)))?;
        let image = images.join(name);
        if !image.is_file() {
            return Err(bad(
                labels,
                format!("line {}: image {} not found", i + 1, image.display()),
            ));
        }
        jobs.push(LabelJob {
            image,
            name: name.to_string(),
            class,
        });
    }
    Ok(jobs)
}

/// Where the label of `job` goes under `out`.
pub fn label_path(out: &Path, job: &LabelJob) -> PathBuf {
    out.join(Path::new(&job.name).with_extension("png"))
}

/// An image file as a `1 x 3 x H x W` tensor of 0-255 RGB values.
pub fn image_tensor(path: &Path, device: &Device) -> TrainResult<Tensor> {
    let img = segkit_data::image::open(path)?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<f32> = img.into_raw().into_iter().map(f32::from).collect();
    Ok(Tensor::from_vec(data, (h, w, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}

/// The per-pixel consensus scores of one image over `models` (row-major `H x W`).
pub fn consensus_scores(
    models: &[Classifier],
    explainer: &dyn Explainer,
    reduce: ChannelReduce,
    pixels: &Tensor,
    class: usize,
    key: &str,
) -> TrainResult<Vec<f32>> {
    let mut maps = Vec::with_capacity(models.len());
    for (i, m) in models.iter().enumerate() {
        let x = m.normalize(pixels)?;
        let f = |t: &Tensor| -> TrainResult<Tensor> { Ok(m.forward_t(t, false)?) };
        let attr = explainer.attribute(&f, &x, &[class], &[format!("{key}#{i}")])?;
        let map = reduce_channels(&attr, reduce)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        maps.push(map);
    }
    Ok(consensus(&maps))
}

/// Labels one image: consensus, deciles, atomic PNG.
pub fn label_one(
    models: &[Classifier],
    explainer: &dyn Explainer,
    reduce: ChannelReduce,
    job: &LabelJob,
    out: &Path,
    device: &Device,
) -> TrainResult<()> {
    let pixels = image_tensor(&job.image, device)?;
    let (_, _, h, w) = pixels.dims4()?;
    let scores = consensus_scores(
        models,
        explainer,
        reduce,
        &pixels,
        job.class as usize,
        &job.name,
    )?;
    let label = PsslLabel {
        width: w,
        height: h,
        deciles: deciles(&scores),
        class: job.class,
    };
    let path = label_path(out, job);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| bad(parent, e))?;
    }
    label.write(&path)
}

/// Removes temporary files (`.NAME.tmp-PID`) that a killed run left in `dir` (not recursive).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.contains(".png.tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Labels every job whose label is missing, in parallel; `progress(done, total)` is called
/// after each image. Returns `(written, skipped)`.
pub fn generate(
    models: &[Classifier],
    explainer: &dyn Explainer,
    reduce: ChannelReduce,
    jobs: &[LabelJob],
    out: &Path,
    device: &Device,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> TrainResult<(usize, usize)> {
    std::fs::create_dir_all(out).map_err(|e| bad(out, e))?;
    remove_stale_temps(out);
    let pending: Vec<&LabelJob> = jobs
        .iter()
        .filter(|j| !label_path(out, j).is_file())
        .collect();
    let skipped = jobs.len() - pending.len();
    let done = AtomicUsize::new(skipped);
    progress(skipped, jobs.len());
    pending.par_iter().try_for_each(|job| {
        label_one(models, explainer, reduce, job, out, device)?;
        progress(done.fetch_add(1, Ordering::SeqCst) + 1, jobs.len());
        Ok::<_, TrainError>(())
    })?;
    Ok((pending.len(), skipped))
}
