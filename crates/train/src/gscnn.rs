//! Gated-SCNN training: the four losses of nv-tlabs/GSCNN's `JointEdgeSegLoss` (segmentation,
//! edge x 20, edge attention, dual task) with the edge ground truth made on the fly from each
//! batch's label map ([`edge_targets`]: `edge_utils.py`'s one-hot + distance transform,
//! radius 2), and a compact training loop for segkit-models' [`Gscnn`] (any [`GscnnConfig`]:
//! the presets, or [`demo_net`]'s small ResNet-18 regular stream) that reuses this crate's
//! data order, collation, optimizers and schedule.
//!
//! [`gscnn_losses`] is the loss step of any Gated-SCNN forward pass (segkit-models' `Gscnn`
//! returns the same `seg` / `edge` outputs); [`train_gscnn`] is what `cargo xtask gscnn-demo`
//! runs, with and without the shape stream, to compare mIoU and boundary F-score.
//!
//! Without the shape stream there is no edge output: the loss is the segmentation loss alone
//! (the paper's baseline, a DeepLabV3+-style network trained with the same seg loss).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use segkit_backbones::ResNetConfig;
use segkit_data::edges::EdgeTargetConfig;
use segkit_data::metrics::{BoundaryFScore, BoundaryTolerance, SegMetric};
use segkit_data::SegDataset;
use segkit_heads::gscnn::GscnnHeadConfig;
use segkit_losses::JointEdgeSegLoss;
use segkit_models::gscnn::{Gscnn, GscnnBackbone, GscnnConfig};
use serde::{Deserialize, Serialize};

use crate::config::{DatasetConfig, OptimizerConfig, ScheduleConfig};
use crate::data::{collate, DataOrder, Split};
use crate::losses::NamedLosses;
use crate::optim::Optimizer;
use crate::{TrainError, TrainResult};

/// The binary edge targets (`N x 1 x H x W` f32, 1 on edges) of a label batch (`N x H x W`,
/// u8 / u32 / i64): [`segkit_data::edges::edge_target`] per image.
pub fn edge_targets(labels: &Tensor, cfg: &EdgeTargetConfig) -> TrainResult<Tensor> {
    let (n, h, w) = labels.dims3()?;
    let v: Vec<u32> = labels
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let mut out = Vec::with_capacity(n * h * w);
    for img in v.chunks(h * w) {
        out.extend(cfg.edges(img, h, w)?.into_iter().map(f32::from));
    }
    Ok(Tensor::from_vec(out, (n, 1, h, w), labels.device())?)
}

/// The Gated-SCNN losses of one forward pass, named as the official `losses` dict: with an
/// edge map, `seg_loss`, `edge_loss` (x `20 * edge_weight`), `att_loss` and `dual_loss`
/// ([`JointEdgeSegLoss`]; the edge targets from `labels` by `edge_cfg`, the dual-task loss's
/// Gumbel noise from `uniform`, `N x C x H x W` in `[0, 1)`); without one (no shape stream),
/// `seg_loss` alone.
pub fn gscnn_losses(
    seg: &Tensor,
    edge: Option<&Tensor>,
    labels: &Tensor,
    loss: &JointEdgeSegLoss,
    edge_cfg: &EdgeTargetConfig,
    uniform: Option<&Tensor>,
) -> TrainResult<NamedLosses> {
    let items: Vec<(String, Tensor)> = match edge {
        Some(e) => {
            let et = edge_targets(labels, edge_cfg)?;
            let l = loss.forward(seg, e, labels, &et, uniform)?;
            vec![
                ("seg_loss".into(), l.seg),
                ("edge_loss".into(), l.edge),
                ("att_loss".into(), l.att),
                ("dual_loss".into(), l.dual),
            ]
        }
        None => {
            let ce = segkit_losses::ImageBasedCrossEntropyLoss {
                num_classes: loss.num_classes,
                ignore_index: loss.ignore_index,
                upper_bound: loss.upper_bound,
                norm: false,
                batch_weighting: loss.batch_weighting,
            };
            vec![(
                "seg_loss".into(),
                (ce.forward(seg, labels)? * loss.seg_weight)?,
            )]
        }
    };
    let mut total = items[0].1.clone();
    for (_, t) in &items[1..] {
        total = (total + t)?;
    }
    Ok(NamedLosses { total, items })
}

/// A Gated-SCNN training run on a dataset of fixed-size images (see [`train_gscnn`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GscnnRunConfig {
    /// A name for the run (logs).
    pub name: String,
    /// The network (a segkit-models Gated-SCNN config; its weights start from the seed).
    pub net: GscnnConfig,
    /// The losses (their `num_classes` is the model's).
    pub loss: JointEdgeSegLoss,
    /// The edge ground truth.
    pub edge_target: EdgeTargetConfig,
    /// The dataset; its classes must number `loss.num_classes`.
    pub dataset: DatasetConfig,
    /// Class names and palette (the `custom` layout takes them from here).
    pub meta: segkit_models::DatasetMeta,
    /// The training transforms.
    pub pipeline: Vec<crate::config::TransformConfig>,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Optimizer steps.
    pub iterations: usize,
    /// Images per step (at least 2: BatchNorm).
    pub batch_size: usize,
    /// Seed of initialisation, data order, augmentation, dropout and Gumbel noise.
    pub seed: u64,
    /// Validation images used (`None`: all).
    pub val_limit: Option<usize>,
    /// Boundary F-score tolerances reported.
    pub boundary_tolerances: Vec<BoundaryTolerance>,
}

/// What [`train_gscnn`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GscnnRunResult {
    /// The run's name.
    pub name: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// Validation images.
    pub val_images: usize,
    /// Pixel accuracy.
    #[serde(rename = "aAcc")]
    pub aacc: f64,
    /// Mean IoU over classes (mmseg `IoUMetric`).
    #[serde(rename = "mIoU")]
    pub miou: f64,
    /// Per-class IoU.
    pub iou: Vec<f64>,
    /// `(tolerance, mean boundary F)` for each configured tolerance.
    pub boundary_f: Vec<(BoundaryTolerance, f64)>,
    /// Mean of each loss over the last 50 iterations, by name.
    pub final_losses: BTreeMap<String, f64>,
    /// Wall-clock seconds of the training loop.
    pub train_seconds: f64,
}

fn trainable(varmap: &VarMap) -> TrainResult<BTreeMap<String, Var>> {
    let data = varmap.data().lock().map_err(|_| TrainError::Io {
        path: PathBuf::from("<varmap>"),
        reason: "poisoned lock".into(),
    })?;
    Ok(data
        .iter()
        .filter(|(k, _)| !(k.ends_with(".running_mean") || k.ends_with(".running_var")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

fn normalised_batch(
    samples: &[segkit_data::Sample],
    mean: [f64; 3],
    std: [f64; 3],
) -> TrainResult<(Tensor, Vec<u8>, usize, usize)> {
    let (h, w) = (samples[0].height, samples[0].width);
    let hw = h * w;
    let mut img = vec![0f32; samples.len() * 3 * hw];
    let mut lab = Vec::with_capacity(samples.len() * hw);
    for (k, s) in samples.iter().enumerate() {
        if (s.height, s.width) != (h, w) {
            return Err(segkit_data::Error::InvalidArgument(format!(
                "{}: {} x {} differs from the first image's {h} x {w}",
                s.path.display(),
                s.height,
                s.width
            ))
            .into());
        }
        for c in 0..3 {
            let (m, sd) = (mean[c] as f32, std[c] as f32);
            for p in 0..hw {
                img[(k * 3 + c) * hw + p] = (f32::from(s.image[p * 3 + c]) - m) / sd;
            }
        }
        lab.extend(s.semantic.clone().unwrap_or_else(|| vec![255; hw]));
    }
    let x = Tensor::from_vec(img, (samples.len(), 3, h, w), &Device::Cpu)?;
    Ok((x, lab, h, w))
}

/// Evaluates `net` on `val` (whole images, batches of `bs`): mIoU and boundary F-scores.
fn evaluate_gscnn(
    net: &Gscnn,
    val: &dyn SegDataset,
    k: usize,
    bs: usize,
    tolerances: &[BoundaryTolerance],
) -> TrainResult<(segkit_data::metrics::SegMetricResult, Vec<f64>, usize)> {
    let ignore = val.info().ignore_index;
    let mut metric = SegMetric::new(k, i64::from(ignore))?;
    let mut bf: Vec<BoundaryFScore> = tolerances
        .iter()
        .map(|&t| BoundaryFScore::new(k, i64::from(ignore), t))
        .collect();
    let n = val.len();
    let mut i = 0;
    while i < n {
        let samples = (i..(i + bs).min(n))
            .map(|j| val.get(j))
            .collect::<Result<Vec<_>, _>>()?;
        i += samples.len();
        let pre = preprocessor(net.config());
        let (x, lab, h, w) = normalised_batch(&samples, pre.mean, pre.std)?;
        let pred: Vec<u32> = net
            .forward_t(&x, None, false)?
            .seg
            .argmax(1)?
            .flatten_all()?
            .to_vec1()?;
        for (p, g) in pred.chunks(h * w).zip(lab.chunks(h * w)) {
            metric.update(p, g)?;
            for m in &mut bf {
                m.update(p, g, h, w)?;
            }
        }
    }
    let f = bf.iter().map(|m| m.compute().mean).collect();
    Ok((metric.compute(), f, n))
}

/// The augmented samples of iteration `it` (data order, per-sample augmentation seeds).
fn load_batch(
    cfg: &GscnnRunConfig,
    train: &dyn SegDataset,
    pipeline: &segkit_data::augment::Pipeline,
    order: &mut DataOrder,
    it: usize,
) -> TrainResult<Vec<segkit_data::augment::Augmented>> {
    let mut samples = Vec::with_capacity(cfg.batch_size);
    for b in 0..cfg.batch_size {
        let s = train.get(order.next_index())?;
        let counter = (it * cfg.batch_size + b) as u64;
        let mut rng = segkit_data::augment::Rng::for_sample(cfg.seed, 0, counter);
        samples.push(pipeline.apply(s, &mut rng)?);
    }
    Ok(samples)
}

/// The mean of each named value over the last `n` records.
fn tail_means(history: &[BTreeMap<String, f64>], n: usize) -> BTreeMap<String, f64> {
    let tail = &history[history.len().saturating_sub(n)..];
    let mut out = BTreeMap::new();
    for rec in tail {
        for (k, v) in rec {
            *out.entry(k.clone()).or_insert(0.0) += v / tail.len() as f64;
        }
    }
    out
}

/// Trains a [`Gscnn`] as `cfg` says and evaluates it on the validation split; `progress`
/// sees each iteration's losses.
pub fn train_gscnn(
    cfg: &GscnnRunConfig,
    progress: impl FnMut(usize, &BTreeMap<String, f64>),
) -> TrainResult<GscnnRunResult> {
    Ok(run(cfg, progress)?.0)
}

/// [`train_gscnn`], then writes the trained model into `dir` as `segkit train` does
/// (`model.safetensors` in the official key names, `config.json` the tagged
/// [`segkit_models::ModelConfig`]): `segkit infer --model dir` and
/// [`segkit_models::ModelConfig::load`] reload it. Returns the result and the weights' path.
pub fn train_gscnn_into(
    cfg: &GscnnRunConfig,
    dir: &std::path::Path,
    progress: impl FnMut(usize, &BTreeMap<String, f64>),
) -> TrainResult<(GscnnRunResult, PathBuf)> {
    let (r, varmap) = run(cfg, progress)?;
    crate::checkpoint::ensure_dir(dir)?;
    let path = dir.join(crate::trainer::MODEL_FILE);
    let mut w: Vec<(String, Tensor)> = Vec::new();
    for (k, v) in varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Io {
            path: PathBuf::from("<varmap>"),
            reason: "poisoned lock".into(),
        })?
        .iter()
    {
        w.push((k.clone(), crate::eval::detached_copy(v.as_tensor())?));
    }
    crate::checkpoint::save(&path, &w, &BTreeMap::new())?;
    let tagged = segkit_models::ModelConfig::Gscnn(Box::new(cfg.net.clone()));
    let cfg_path = dir.join(crate::trainer::CONFIG_FILE);
    crate::checkpoint::write_atomic(
        &cfg_path,
        format!("{}\n", tagged.to_json_pretty()).as_bytes(),
    )?;
    Ok((r, path))
}

fn run(
    cfg: &GscnnRunConfig,
    mut progress: impl FnMut(usize, &BTreeMap<String, f64>),
) -> TrainResult<(GscnnRunResult, VarMap)> {
    let bad = |reason: String| TrainError::Config {
        path: PathBuf::from(format!("<Gated-SCNN run `{}`>", cfg.name)),
        reason,
    };
    if cfg.batch_size < 2 {
        return Err(bad("`batch_size` must be at least 2 (BatchNorm)".into()));
    }
    let k = cfg.loss.num_classes;
    let train = crate::data::open_dataset(&cfg.dataset, Split::Train, &cfg.meta)?;
    let mut val = crate::data::open_dataset(&cfg.dataset, Split::Val, &cfg.meta)?;
    if let Some(n) = cfg.val_limit {
        val = Box::new(crate::data::Limited::new(val, n));
    }
    if train.info().classes.len() != k || train.is_empty() {
        return Err(bad(format!(
            "{} classes and {} training images for a {k}-class loss",
            train.info().classes.len(),
            train.len()
        )));
    }
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let net = Gscnn::new(&cfg.net, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    for (name, var) in varmap
        .data()
        .lock()
        .map_err(|_| bad("poisoned lock".into()))?
        .iter()
    {
        var.set(&crate::init::init_value(name, var.dims(), cfg.seed, None)?)?;
    }
    let params = trainable(&varmap)?;
    let parameters = params.values().map(|v| v.elem_count()).sum();
    let pipeline = segkit_data::augment::Pipeline::new(cfg.pipeline.clone())?;
    let pre = preprocessor(&cfg.net);
    let mut order = DataOrder::new(cfg.seed, train.len(), 0, 0);
    let mut optimizer = Optimizer::new(&cfg.optimizer);
    let ignore = train.info().ignore_index;
    let mut rng_state = cfg.seed ^ 0x6_5C44;
    let mut history: Vec<BTreeMap<String, f64>> = Vec::new();
    let t0 = Instant::now();
    for it in 0..cfg.iterations {
        let samples = load_batch(cfg, train.as_ref(), &pipeline, &mut order, it)?;
        let batch = collate(&samples, &pre, None, ignore, &dev)?;
        segkit_core::random::set_thread_state(Some(rng_state));
        let out = net.forward_t(&batch.images, None, true)?;
        let u = segkit_core::random::uniform(out.seg.dims(), &dev)?;
        rng_state = segkit_core::random::thread_state().unwrap_or(0);
        segkit_core::random::set_thread_state(None);
        let losses = gscnn_losses(
            &out.seg,
            out.edge.as_ref(),
            &batch.labels,
            &cfg.loss,
            &cfg.edge_target,
            Some(&u),
        )?;
        let mut rec = BTreeMap::new();
        for (n, t) in &losses.items {
            rec.insert(n.clone(), t.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        }
        let total: f64 = rec.values().sum();
        if !total.is_finite() {
            return Err(TrainError::Diverged {
                iteration: it + 1,
                loss: total,
            });
        }
        rec.insert("loss".into(), total);
        let grads = losses.total.backward()?;
        let g: std::collections::HashMap<String, Tensor> = params
            .iter()
            .filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
            .collect();
        let lr = cfg.schedule.lr_at(cfg.optimizer.lr(), it, cfg.iterations);
        optimizer.step(&params, &g, lr)?;
        progress(it + 1, &rec);
        history.push(rec);
    }
    let train_seconds = t0.elapsed().as_secs_f64();
    let (m, f, val_images) = evaluate_gscnn(&net, val.as_ref(), k, 8, &cfg.boundary_tolerances)?;
    let final_losses = tail_means(&history, 50);
    let result = GscnnRunResult {
        name: cfg.name.clone(),
        parameters,
        val_images,
        aacc: m.aacc,
        miou: m.miou,
        iou: m.iou,
        boundary_f: cfg.boundary_tolerances.iter().copied().zip(f).collect(),
        final_losses,
        train_seconds,
    };
    Ok((result, varmap))
}

/// The small Gated-SCNN of the demo comparison for `num_classes` classes, a
/// [`GscnnConfig`] that saves and reloads like the presets: a ResNet-18 regular stream at
/// base width 16 (deep stem of width 8, mmseg V1c layout) dilated to output stride 8, the
/// official shape stream (widths 32 / 16 / 8, three gates), ASPP / decoder at width 32 with
/// rates 4 / 8 / 12 (12 / 24 / 36 would see only padding on a 16 x 16 map), the official Canny
/// input (as released) and ImageNet normalisation.
pub fn demo_net(num_classes: usize, shape_stream: bool) -> TrainResult<GscnnConfig> {
    let regular = ResNetConfig {
        stem: segkit_backbones::Stem::Deep { width: 8 },
        key_style: segkit_backbones::KeyStyle::Mmseg,
        base_channels: 16,
        ..ResNetConfig::mmseg_v1c(18)
    }
    .with_output_stride(8)?;
    Ok(GscnnConfig {
        name: "gscnn_demo_r18-w16".into(),
        backbone: GscnnBackbone::ResNet50D8,
        num_classes,
        shape_stream,
        regular: Some(regular),
        head_config: Some(GscnnHeadConfig {
            aspp_channels: 32,
            aspp_rates: vec![4, 8, 12],
            bot_aspp_channels: 32,
            bot_fine_channels: 16,
            decoder_channels: 32,
            ..GscnnHeadConfig::official(num_classes)
        }),
        meta: segkit_models::DatasetMeta::default(),
        ..GscnnConfig::wrn38_cityscapes()
    })
}

/// A Gated-SCNN config's normalisation on the 0..255 scale (the collated batch's).
fn preprocessor(cfg: &GscnnConfig) -> segkit_models::DataPreprocessorConfig {
    segkit_models::DataPreprocessorConfig {
        mean: cfg.mean.map(|m| m * 255.0),
        std: cfg.std.map(|s| s * 255.0),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LrPolicy, TransformConfig};

    fn run_cfg(root: &std::path::Path, shape_stream: bool) -> GscnnRunConfig {
        let k = 4;
        GscnnRunConfig {
            name: "toy".into(),
            net: demo_net(k, shape_stream).unwrap(),
            loss: JointEdgeSegLoss::gscnn(k),
            edge_target: EdgeTargetConfig::gscnn(k),
            dataset: DatasetConfig::Custom {
                root: root.to_path_buf(),
                train_split: "train".into(),
                val_split: "val".into(),
                ignore_index: 255,
            },
            meta: segkit_models::DatasetMeta {
                classes: (0..k).map(|i| format!("c{i}")).collect(),
                palette: vec![[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]],
            },
            pipeline: vec![TransformConfig::RandomFlip {
                prob: 0.5,
                direction: segkit_data::augment::FlipDirection::Horizontal,
            }],
            optimizer: OptimizerConfig::AdamW {
                lr: 1e-3,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.01,
                decay_norm_and_bias: false,
            },
            schedule: ScheduleConfig {
                policy: LrPolicy::Poly {
                    power: 0.9,
                    min_lr: 1e-5,
                },
                warmup: None,
            },
            iterations: 2,
            batch_size: 2,
            seed: 3,
            val_limit: Some(2),
            boundary_tolerances: vec![BoundaryTolerance::Pixels(1)],
        }
    }

    #[test]
    fn edge_targets_from_a_label_batch() -> TrainResult<()> {
        let mut l = vec![0u32; 2 * 6 * 6];
        l[6 * 6 + 14] = 2;
        let t = Tensor::from_vec(l, (2, 6, 6), &Device::Cpu)?;
        let e = edge_targets(&t, &EdgeTargetConfig::gscnn(3))?;
        assert_eq!(e.dims(), &[2, 1, 6, 6]);
        let v: Vec<f32> = e.flatten_all()?.to_vec1()?;
        // Image 0 is all road (no channel): no edge. Image 1: the class-2 pixel's disk.
        assert!(v[..36].iter().all(|&x| x == 0.0));
        assert_eq!(v[36..].iter().filter(|&&x| x == 1.0).count(), 13);
        Ok(())
    }

    #[test]
    fn demo_net_saves_and_reloads_as_a_model_config() -> TrainResult<()> {
        for shape in [true, false] {
            let cfg = segkit_models::ModelConfig::Gscnn(Box::new(demo_net(4, shape)?));
            let back = segkit_models::ModelConfig::from_json(&cfg.to_json_pretty())?;
            assert_eq!(back, cfg);
            let segkit_models::ModelConfig::Gscnn(g) = back else {
                panic!("not a Gated-SCNN config");
            };
            let varmap = VarMap::new();
            let net = Gscnn::new(
                &g,
                VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            )?;
            let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
            let o = net.forward_t(&x, None, false)?;
            assert_eq!(o.seg.dims(), &[2, 4, 32, 32]);
            assert_eq!(
                o.edge.map(|e| e.dims().to_vec()),
                shape.then(|| vec![2, 1, 32, 32])
            );
        }
        Ok(())
    }

    #[test]
    fn trained_model_reloads_and_predicts_class_and_edge_maps() -> TrainResult<()> {
        let tmp = |e: std::io::Error| TrainError::Io {
            path: PathBuf::from("<tempdir>"),
            reason: e.to_string(),
        };
        let dir = tempfile::tempdir().map_err(tmp)?;
        crate::data::write_toy_dataset(dir.path(), &[("train", 4), ("val", 2)], 32, 4, 1)?;
        let out = dir.path().join("run");
        let mut losses = Vec::new();
        let (_, path) = train_gscnn_into(&run_cfg(dir.path(), true), &out, |_, rec| {
            losses.push(rec.clone());
        })?;
        assert_eq!(losses.len(), 2);
        assert!(losses
            .iter()
            .flat_map(|r| r.values())
            .all(|v| v.is_finite()));
        let json = std::fs::read_to_string(out.join(crate::trainer::CONFIG_FILE)).map_err(tmp)?;
        let model_cfg = segkit_models::ModelConfig::from_json(&json)?;
        let model = model_cfg.load("toy", &path, &Device::Cpu)?;
        let g = model
            .as_any()
            .downcast_ref::<Gscnn>()
            .expect("config.json names a Gated-SCNN");
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(24, 20, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 12) as u8, 90])
        }));
        let p = g.predict_image(&img)?;
        assert_eq!(p.edge.map(|e| e.dimensions()), Some((24, 20)));
        assert_eq!((p.semantic.width, p.semantic.height), (24, 20));
        Ok(())
    }

    #[test]
    fn trains_with_and_without_the_shape_stream() -> TrainResult<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::Io {
            path: PathBuf::from("<tempdir>"),
            reason: e.to_string(),
        })?;
        crate::data::write_toy_dataset(dir.path(), &[("train", 4), ("val", 2)], 32, 4, 1)?;
        for shape in [true, false] {
            let mut names = Vec::new();
            let r = train_gscnn(&run_cfg(dir.path(), shape), |_, rec| {
                names = rec.keys().cloned().collect();
                assert!(rec.values().all(|v| v.is_finite()));
            })?;
            let want: &[&str] = if shape {
                &["att_loss", "dual_loss", "edge_loss", "loss", "seg_loss"]
            } else {
                &["loss", "seg_loss"]
            };
            assert_eq!(names, want);
            assert_eq!(r.val_images, 2);
            assert!((0.0..=1.0).contains(&r.boundary_f[0].1));
        }
        Ok(())
    }
}
