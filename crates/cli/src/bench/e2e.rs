//! End-to-end cases of `segkit bench` (`e2e_*`): an image file in, a result out, as a user
//! meets it. The model is written once (untimed) as a segkit model directory (`config.json` +
//! `model.safetensors` holding the synthetic weights that `tests/parity/synth.py` gives the
//! reference) in a temporary directory and loaded back with [`Segmenter::load`], as
//! `segkit infer --model DIR` loads it; the image is a PNG made from a fixed integer formula
//! ([`synthetic_photo`], mirrored in `tests/parity/bench_torch_e2e.py`, so both sides decode
//! the same pixels). Each timed run is one image:
//!
//! - `e2e_pspnet_cityscapes`: `segkit infer`'s per-image code path (`infer::process`: decode
//!   the PNG, the preset's test resize and normalisation, the forward pass, the arg-max at the
//!   image's size, then encode and write `STEM_classes.png`, `STEM_color.png`,
//!   `STEM_overlay.png` and `STEM.json`) with `pspnet_r50-d8_cityscapes-512x1024` on a
//!   2048x1024 image (mmseg's side: `init_model` + `inference_model`, then the class map, its
//!   colours and the overlay written as PNGs).
//! - `e2e_oneformer_panoptic`: decode a 640x480 PNG and [`Segmenter::segment`] it with
//!   OneFormer Swin-T (`oneformer_ade20k_swin_tiny`), task panoptic: the processor's resize
//!   (shortest edge 512) and normalisation, the task tokens, the forward pass and the
//!   panoptic post-processing (transformers' side: `OneFormerProcessor` + the model +
//!   `post_process_panoptic_segmentation`). Synthetic weights give near-uniform class
//!   probabilities (~1/150), so both sides use thresholds low enough that segments exist
//!   (the values of `tests/parity/gen_oneformer.py`'s photo case) and fuse the stuff classes.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage};
use segkit::{Segmenter, Task};
use segkit_core::testing::SyntheticWeights;

use super::Job;
use crate::CliError;

/// The end-to-end cases.
pub const CASES: &[(&str, &str)] = &[
    (
        "e2e_pspnet_cityscapes",
        "segkit infer per image (PNG decode, preprocess, forward, argmax, write) with \
         pspnet_r50-d8_cityscapes-512x1024 on a 2048x1024 PNG",
    ),
    (
        "e2e_oneformer_panoptic",
        "OneFormer Swin-T (oneformer_ade20k_swin_tiny) panoptic on a 640x480 PNG: decode, \
         preprocess, forward, post-processing",
    ),
];

/// The 8-bit RGB image of the e2e cases: smooth ramps with blocky offsets and a fine texture,
/// from integers only (bit-equal to the Python side's).
pub fn synthetic_photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let r = (x * 255 / (w - 1) + ((x / 64 + y / 48) % 3) * 40) % 256;
        let g = (y * 255 / (h - 1) + ((x / 80 * 7 + y / 60 * 5) % 4) * 30) % 256;
        let b = ((x ^ y) & 127) + ((x / 128 + y / 96) % 2) * 64;
        image::Rgb([r as u8, g as u8, b as u8])
    })
}

/// A temporary directory removed when dropped (the CLI has no `tempfile` dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self, CliError> {
        let p = std::env::temp_dir().join(format!("segkit-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Writes preset `preset` with synthetic weights as a segkit model directory `dir`.
fn write_model_dir(preset: &str, dir: &Path) -> Result<(), CliError> {
    let cfg = segkit::preset(preset).map_err(fail)?;
    let rec = SyntheticWeights::default().recording();
    cfg.build(rec.var_builder(DType::F32, &Device::Cpu))
        .map_err(fail)?;
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let map = rec.recorded();
    segkit_core::checkpoint::save_safetensors(&map, dir.join("model.safetensors")).map_err(fail)?;
    std::fs::write(dir.join("config.json"), cfg.to_json_pretty())
        .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    Ok(())
}

/// Writes the synthetic photo of `w` x `h` as `dir/photo.png`.
fn write_photo(dir: &Path, w: u32, h: u32) -> Result<PathBuf, CliError> {
    let p = dir.join("photo.png");
    synthetic_photo(w, h).save(&p).map_err(fail)?;
    Ok(p)
}

/// Builds the job of an e2e case.
pub fn make(case: &str) -> Result<Job, CliError> {
    let tmp = TempDir::new(case)?;
    let dev = Device::Cpu;
    match case {
        "e2e_pspnet_cityscapes" => {
            let model = tmp.0.join("pspnet_r50-d8_cityscapes");
            write_model_dir("pspnet_r50-d8_cityscapes-512x1024", &model)?;
            let img = write_photo(&tmp.0, 2048, 1024)?;
            let out = tmp.0.join("out");
            std::fs::create_dir_all(&out).map_err(fail)?;
            let seg = Segmenter::load(&model, &dev).map_err(fail)?;
            Ok(Box::new(move || {
                let _keep = &tmp;
                crate::infer::process(&seg, Task::Semantic, &img, &out, 0.5).map_err(fail)?;
                Ok(Tensor::new(0u32, &Device::Cpu)?)
            }))
        }
        "e2e_oneformer_panoptic" => {
            let model = tmp.0.join("oneformer_ade20k_swin_tiny");
            write_model_dir("oneformer_ade20k_swin_tiny", &model)?;
            let img = write_photo(&tmp.0, 640, 480)?;
            let seg = Segmenter::load(&model, &dev).map_err(fail)?;
            let things = seg.thing_classes().unwrap_or(&[]).to_vec();
            let mut opts = segkit::PredictOptions::default();
            opts.panoptic.threshold = 0.015;
            opts.panoptic.mask_threshold = 0.018;
            opts.panoptic.overlap_mask_area_threshold = 0.05;
            opts.panoptic.label_ids_to_fuse = (0..seg.classes().len() as u32)
                .filter(|c| !things.contains(c))
                .collect();
            let seg = seg.with_predict_options(opts);
            Ok(Box::new(move || {
                let _keep = &tmp;
                let image: DynamicImage = segkit::image::open(&img).map_err(fail)?;
                let out = seg.segment(&image, Task::Panoptic).map_err(fail)?;
                let n = match &out {
                    segkit::Segmentation::Panoptic(p) => p.segments.len(),
                    _ => 0,
                };
                Ok(Tensor::new(n as u32, &Device::Cpu)?)
            }))
        }
        other => Err(fail(format!("unknown e2e case `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::synthetic_photo;

    /// The e2e images equal the Python side's: sum of (index + 1) x byte over the RGB bytes,
    /// the values printed by `bench_torch_e2e.photo` for the two sizes.
    #[test]
    fn synthetic_photo_is_the_python_sides() {
        for (w, h, want) in [
            (640, 480, 51_075_745_371_168u64),
            (2048, 1024, 2_381_658_260_496_640),
        ] {
            let img = synthetic_photo(w, h);
            let sum: u64 = img
                .as_raw()
                .iter()
                .enumerate()
                .map(|(i, &b)| (i as u64 + 1) * b as u64)
                .sum();
            assert_eq!(sum, want, "{w}x{h}");
        }
    }
}
