//! [`ClassifierTask`]: an image classifier ([`segkit_models::classifier::Classifier`]: a ResNet
//! or Swin, global average pooling, fc) as a [`TrainModel`], so that `segkit train` trains
//! PSSL's ensemble members (and any classifier) with everything the trainer shares with
//! segmentation: the data order, the augmentation pipeline, SGD / AdamW with the schedule,
//! gradient accumulation, atomic checkpoints with exact resume, the metrics log.
//!
//! - Model: `{"type": "Classifier", "name": .., "backbone": {..}, "num_classes": ..}` in the
//!   training config (a [`ClassifierConfig`], the same JSON as the `config.json` it writes),
//!   or a classifier preset / model file (`{"type": "Preset", "name": "resnet18_imagenet"}`).
//! - Data: the classification layouts of segkit-data ([`segkit_data::classification`]:
//!   `{"type": "ImageFolder", ..}`, `{"type": "Idx", ..}`), whose label maps hold each
//!   image's class at every pixel; the target of an image is the class under the collation
//!   padding ([`segkit_data::classification::classes_of_label_maps`]).
//! - Loss: `loss_ce`, the cross-entropy of the logits averaged over the batch
//!   (`F.cross_entropy`).
//! - Metric: top-1 accuracy, as [`EvalResult::aacc`] and `extra["top1"]`; `mAcc` is the mean
//!   per-class recall and the per-class IoU is `TP / (TP + FP + FN)` over images (mmseg's
//!   `IoUMetric` on one value per image). Consecutive images of one size are evaluated as a
//!   batch, so nothing is padded at evaluation.
//! - Output: `model.safetensors` (the classifier's torchvision / timm / HF keys) and
//!   `config.json` (`"type": "Classifier"`), which `segkit pssl generate --models` reads.
//!
//! Initial weights come from the seed as for segmentors (no zero-initialised residual
//! gammas), which is what `crate::classify::train_classifier` (the in-memory loop) draws too.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_data::augment::Augmented;
use segkit_data::classification::classes_of_label_maps;
use segkit_data::metrics::SegMetric;
use segkit_data::{Sample, SegDataset};
use segkit_models::classifier::{Classifier, ClassifierBackbone, ClassifierConfig};
use segkit_models::{DataPreprocessorConfig, DatasetMeta, ModelConfig};

use crate::data::{collate, Batch};
use crate::eval::EvalResult;
use crate::losses::NamedLosses;
use crate::task::TrainModel;
use crate::TrainResult;

/// The name of the classification loss in logs and checkpoints.
pub const LOSS_NAME: &str = "loss_ce";

/// A classifier being trained.
pub struct ClassifierTask {
    cfg: ClassifierConfig,
    model: Classifier,
    meta: DatasetMeta,
    pre: DataPreprocessorConfig,
    names: Vec<String>,
}

impl std::fmt::Debug for ClassifierTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierTask")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

/// Class names (`class_<i>` where the config has none) and a palette.
fn meta_of(cfg: &ClassifierConfig) -> DatasetMeta {
    let classes = if cfg.classes.is_empty() {
        (0..cfg.num_classes).map(|i| format!("class_{i}")).collect()
    } else {
        cfg.classes.clone()
    };
    let palette = (0..cfg.num_classes)
        .map(|i| {
            [
                (i * 67 % 256) as u8,
                (i * 131 % 256) as u8,
                (i * 29 % 256) as u8,
            ]
        })
        .collect();
    DatasetMeta { classes, palette }
}

impl ClassifierTask {
    /// Builds the classifier `cfg` with its variables in `vb`.
    pub fn new(cfg: ClassifierConfig, vb: VarBuilder<'_>) -> TrainResult<Self> {
        let model = Classifier::new(&cfg, vb)?;
        let pre = DataPreprocessorConfig {
            mean: cfg.mean.map(f64::from),
            std: cfg.std.map(f64::from),
            rgb: true,
            pad_val: 0.0,
            size: None,
            ..DataPreprocessorConfig::default()
        };
        Ok(Self {
            meta: meta_of(&cfg),
            pre,
            names: vec![LOSS_NAME.to_string()],
            cfg,
            model,
        })
    }

    /// The classifier config.
    pub fn config(&self) -> &ClassifierConfig {
        &self.cfg
    }

    /// The model whose variables are trained.
    pub fn model(&self) -> &Classifier {
        &self.model
    }
}

/// `F.cross_entropy(logits, targets)` (mean over the batch).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> TrainResult<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = lsm.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// The image classes of a collated batch (`N x H x W` label maps).
fn batch_classes(labels: &Tensor, ignore: u16) -> TrainResult<Vec<u32>> {
    let n = labels.dim(0)?;
    let maps = labels.flatten_all()?.to_vec1::<u32>()?;
    Ok(classes_of_label_maps(&maps, n, u32::from(ignore))?)
}

impl TrainModel for ClassifierTask {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn model_config(&self) -> ModelConfig {
        ModelConfig::Classifier(Box::new(self.cfg.clone()))
    }

    fn config_json(&self) -> TrainResult<String> {
        crate::checkpoint::to_json(&self.cfg)
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn meta(&self) -> &DatasetMeta {
        &self.meta
    }

    fn preprocessor(&self) -> &DataPreprocessorConfig {
        &self.pre
    }

    fn loss_names(&self) -> &[String] {
        &self.names
    }

    fn min_batch_size(&self) -> usize {
        match self.cfg.backbone {
            ClassifierBackbone::ResNet(_) => 2,
            ClassifierBackbone::Swin(_) => 1,
        }
    }

    fn losses(&self, batch: &Batch, ignore_index: u16, rng: &mut u64) -> TrainResult<NamedLosses> {
        let targets = batch_classes(&batch.labels, ignore_index)?;
        let targets = Tensor::new(targets.as_slice(), batch.images.device())?;
        let logits = segkit_core::random::with_thread_state(rng, || {
            self.model.forward_t(&batch.images, true)
        });
        let loss = cross_entropy(&logits?, &targets)?;
        Ok(NamedLosses {
            total: loss.clone(),
            items: vec![(LOSS_NAME.to_string(), loss)],
        })
    }

    fn evaluate(
        &self,
        weights: HashMap<String, Tensor>,
        dataset: &dyn SegDataset,
        batch_size: usize,
    ) -> TrainResult<EvalResult> {
        let model = Classifier::new(
            &self.cfg,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        evaluate_classifier(&model, &self.pre, dataset, batch_size)
    }

    fn activation_bytes_per_pixel(&self) -> u64 {
        // A segmentor's ResNet figures (`crate::memory`) bound a classifier's, which keeps no
        // full-resolution class maps and runs its stages at strides 4-32.
        match &self.cfg.backbone {
            ClassifierBackbone::ResNet(r) => {
                let base: u64 = match r.depth {
                    d if d <= 18 => 8_000,
                    d if d <= 34 => 13_000,
                    d if d <= 50 => 18_000,
                    _ => 30_000,
                };
                base.saturating_mul(r.base_channels as u64) / 64
            }
            ClassifierBackbone::Swin(_) => 60_000,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Top-1 accuracy (and per-class recall / IoU over images) of `model` on `dataset`, with
/// `pre`'s normalisation; runs of same-size images are batched (at most `batch_size`).
pub fn evaluate_classifier(
    model: &Classifier,
    pre: &DataPreprocessorConfig,
    dataset: &dyn SegDataset,
    batch_size: usize,
) -> TrainResult<EvalResult> {
    let k = model.config().num_classes;
    let info = dataset.info();
    let ignore = info.ignore_index;
    let mut metric = SegMetric::new(k, i64::from(ignore))?;
    let n = dataset.len();
    if n == 0 || batch_size == 0 {
        return Err(segkit_data::Error::InvalidArgument(format!(
            "cannot evaluate {n} images in batches of {batch_size}"
        ))
        .into());
    }
    let mut pending: Vec<Augmented> = Vec::new();
    let mut right = 0usize;
    let mut flush = |batch: &mut Vec<Augmented>| -> TrainResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let b = collate(batch, pre, None, ignore, &Device::Cpu)?;
        let truth = batch_classes(&b.labels, ignore)?;
        let pred = model
            .forward_t(&b.images, false)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        for (p, t) in pred.iter().zip(&truth) {
            right += usize::from(p == t);
            metric.update(&[*p as u8], &[*t as u8])?;
        }
        batch.clear();
        Ok(())
    };
    for i in 0..n {
        let s: Sample = dataset.get(i)?;
        let same = pending
            .first()
            .is_none_or(|f| (f.height, f.width) == (s.height, s.width));
        if !same || pending.len() == batch_size {
            flush(&mut pending)?;
        }
        pending.push(Augmented::new(s)?);
    }
    flush(&mut pending)?;
    let r = metric.compute();
    let opt = |v: f64| (!v.is_nan()).then_some(v);
    let top1 = right as f64 / n as f64;
    Ok(EvalResult {
        num_images: n,
        aacc: top1,
        miou: r.miou,
        macc: r.macc,
        classes: if info.classes.len() == k {
            info.classes.clone()
        } else {
            (0..k).map(|c| format!("class_{c}")).collect()
        },
        iou: r.iou.iter().copied().map(opt).collect(),
        acc: r.acc.iter().copied().map(opt).collect(),
        extra: BTreeMap::from([("top1".to_string(), top1)]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `root/{train,val}/{bright,dark}/NNN.png`: 32x32 images around 190-230 or 30-70 with a
    /// texture; 16 per class for training, 6 for validation.
    fn write_folder(root: &std::path::Path) {
        for (split, count) in [("train", 16u32), ("val", 6)] {
            for (class, base) in [("bright", 190u32), ("dark", 30)] {
                let d = root.join(split).join(class);
                std::fs::create_dir_all(&d).unwrap();
                for i in 0..count {
                    let salt = i + if split == "val" { 100 } else { 0 };
                    let img = image::RgbImage::from_fn(32, 32, |x, y| {
                        let v = (base + (x * 7 + y * 13 + salt * 31) % 41) as u8;
                        image::Rgb([v, v.saturating_sub((x % 5) as u8 * 3), v])
                    });
                    img.save(d.join(format!("{i:03}.png"))).unwrap();
                }
            }
        }
    }

    /// A narrow ResNet-18 reaches 100 % top-1 on held-out images for every seed tried, and
    /// the trainer's evaluation agrees with `classify::accuracy` on the same weights.
    #[test]
    fn trainer_learns_a_separable_image_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        write_folder(&root);
        let mut c = ClassifierConfig::resnet("tiny", 18, 4, 2);
        c.classes = vec!["bright".into(), "dark".into()];
        let mut model = serde_json::to_value(&c).unwrap();
        model["type"] = "Classifier".into();
        for seed in [0, 3, 8] {
            let cfg = serde_json::json!({
                "model": model,
                "dataset": {"type": "ImageFolder", "root": root},
                "optimizer": {"type": "AdamW", "lr": 0.002},
                "iterations": 60, "batch_size": 8, "seed": seed,
                "output_dir": dir.path().join("out")
            });
            let cfg = crate::TrainConfig::from_json(&cfg.to_string()).unwrap();
            let mut t = crate::Trainer::new(cfg).unwrap().quiet(true);
            assert_eq!(t.model().loss_names(), [LOSS_NAME]);
            t.train_until(60).unwrap();
            let r = t.evaluate().unwrap();
            assert_eq!((r.num_images, r.aacc), (12, 1.0), "seed {seed}: {r:?}");
            assert_eq!(r.extra["top1"], 1.0);
            // The same weights through the in-memory path.
            let ts: HashMap<String, Tensor> = t.weights().unwrap().into_iter().collect();
            let m = Classifier::new(&c, VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu))
                .unwrap();
            let val =
                crate::data::open_dataset(&t.config().dataset, crate::Split::Val, t.model().meta())
                    .unwrap();
            let mut px = Vec::new();
            let mut classes = Vec::new();
            for i in 0..val.len() {
                let s = val.get(i).unwrap();
                for ch in 0..3 {
                    px.extend(s.image.iter().skip(ch).step_by(3).map(|v| f32::from(*v)));
                }
                classes.push(u32::from(s.semantic.unwrap()[0]));
            }
            let x = Tensor::from_vec(px, (val.len(), 3, 32, 32), &Device::Cpu).unwrap();
            let acc = crate::classify::accuracy(&m, &x, &classes, 5).unwrap();
            assert_eq!(acc, r.aacc, "seed {seed}");
        }
    }

    #[test]
    fn batch_classes_come_from_under_the_padding() {
        let labels =
            Tensor::new(&[[[1u32, 255], [1, 255]], [[0, 0], [0, 0]]], &Device::Cpu).unwrap();
        assert_eq!(batch_classes(&labels, 255).unwrap(), [1, 0]);
        let all_pad = Tensor::new(&[[[255u32, 255]]], &Device::Cpu).unwrap();
        assert!(batch_classes(&all_pad, 255).is_err());
    }
}
