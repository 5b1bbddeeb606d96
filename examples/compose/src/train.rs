//! A few training steps from the reference's random initialisation on segkit's bundled demo
//! canvas, then save and reload.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use segkit::core::checkpoint::StateDict;
use segkit::{EncoderDecoder, ModelConfig, SegmentorConfig};

/// The demo canvas (128 x 128 RGB, Fashion-MNIST items on a background) and its class map,
/// shipped in the repository's `examples/`.
pub fn demo_sample(device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let img = image::open(dir.join("demo_canvas.png"))?.to_rgb8();
    let gt = image::open(dir.join("demo_canvas_gt.png"))?.to_luma8();
    let (w, h) = img.dimensions();
    let x = Tensor::from_vec(img.into_raw(), (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    // ImageNet mean / std, as the demo segmentor's data preprocessor.
    let mean = Tensor::new(&[123.675f32, 116.28, 103.53], device)?.reshape((3, 1, 1))?;
    let std = Tensor::new(&[58.395f32, 57.12, 57.375], device)?.reshape((3, 1, 1))?;
    let x = x.broadcast_sub(&mean)?.broadcast_div(&std)?.unsqueeze(0)?;
    let y = Tensor::from_vec(gt.into_raw(), (h as usize, w as usize), device)?;
    Ok((x, y))
}

/// What [`train_save_reload`] measured.
#[derive(Debug)]
pub struct Report {
    /// Loss before each step.
    pub losses: Vec<f32>,
    /// max |logits before saving - logits after reloading| (inference mode).
    pub reload_max_diff: f32,
    /// max |logits| before saving.
    pub logit_max: f32,
    /// Standard deviation of the initial logits (0 for an all-zero initialisation).
    pub initial_logit_std: f32,
}

/// Builds `cfg` on a `VarMap` (every weight drawn as the reference initialises it), trains
/// `steps` AdamW steps on the demo canvas (pixel-wise cross-entropy of the decode head's
/// logits against the class map sampled at the logits' stride), saves the weights to
/// `dir/model.safetensors` with `dir/config.json`, reloads them strictly and checks the
/// reloaded model's logits equal the trained one's.
pub fn train_save_reload(
    cfg: &SegmentorConfig,
    steps: usize,
    dir: &Path,
) -> anyhow::Result<Report> {
    let dev = Device::Cpu;
    let (x, y) = demo_sample(&dev)?;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    let model = EncoderDecoder::new(cfg, vb.clone())?;
    // Inference mode caches derived weights (BatchNorm folded into convs, Swin's attention
    // bias): look at the initial model through a second instance over the same variables,
    // so that the one we train has no stale cache. (After training, evaluate a fresh
    // instance too, as segkit-train's `Trainer::eval_model` does.)
    let initial = EncoderDecoder::new(cfg, vb.clone())?
        .forward_t(&x, false)?
        .decode
        .logits;
    let initial_logit_std = initial.flatten_all()?.to_dtype(DType::F64)?;
    let m = initial_logit_std.mean_all()?;
    let initial_logit_std = initial_logit_std
        .broadcast_sub(&m)?
        .sqr()?
        .mean_all()?
        .sqrt()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;

    let mut opt = candle_nn::AdamW::new(
        map.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let logits = model.forward_t(&x, true)?.decode.logits; // 1 x K x h x w
        let (_, k, h, w) = logits.dims4()?;
        let stride = y.dim(0)? / h;
        // Labels at the logits' resolution: the class at the centre of each stride cell.
        let idx: Vec<u32> = (0..h).map(|i| (i * stride + stride / 2) as u32).collect();
        let jdx: Vec<u32> = (0..w).map(|j| (j * stride + stride / 2) as u32).collect();
        let target = y
            .index_select(&Tensor::new(idx, &dev)?, 0)?
            .index_select(&Tensor::new(jdx, &dev)?, 1)?
            .flatten_all()?
            .to_dtype(DType::U32)?;
        let flat = logits.permute((0, 2, 3, 1))?.reshape((h * w, k))?;
        let loss = candle_nn::loss::cross_entropy(&flat, &target)?;
        losses.push(loss.to_scalar::<f32>()?);
        opt.backward_step(&loss)?;
    }

    std::fs::create_dir_all(dir)?;
    let weights = dir.join("model.safetensors");
    map.save(&weights)?;
    let model_cfg = ModelConfig::EncoderDecoder(Box::new(cfg.clone()));
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&model_cfg)?,
    )?;

    let trained = EncoderDecoder::new(cfg, vb)?
        .forward_t(&x, false)?
        .decode
        .logits;
    let sd = StateDict::load(&weights)?;
    let reloaded = EncoderDecoder::from_state_dict(cfg, &sd, &dev)?;
    let again = reloaded.forward_t(&x, false)?.decode.logits;
    let reload_max_diff = trained
        .sub(&again)?
        .abs()?
        .flatten_all()?
        .max(D::Minus1)?
        .to_scalar::<f32>()?;
    let logit_max = trained
        .abs()?
        .flatten_all()?
        .max(D::Minus1)?
        .to_scalar::<f32>()?;
    Ok(Report {
        losses,
        reload_max_diff,
        logit_max,
        initial_logit_std,
    })
}

/// Segments the demo canvas with the model saved in `dir` through the front door
/// (`segkit::Segmenter::load`), returning the fraction of pixels whose class matches the
/// ground truth.
pub fn segment_with_segmenter(dir: &Path) -> anyhow::Result<f32> {
    let seg = segkit::Segmenter::load(dir, &Device::Cpu)?;
    let img =
        segkit::image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo_canvas.png"))?;
    let out = seg.segment(&img, segkit::Task::Semantic)?;
    let gt = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo_canvas_gt.png"))?
        .to_luma8();
    let sem = out.semantic();
    let same = sem
        .class_map
        .iter()
        .zip(gt.as_raw())
        .filter(|(p, g)| **p == **g as u32)
        .count();
    Ok(same as f32 / gt.as_raw().len() as f32)
}
