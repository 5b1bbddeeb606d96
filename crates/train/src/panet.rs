//! PANet through the [`crate::Trainer`]: [`PanetTask`] implements [`TrainModel`] with
//! [`segkit_models::Panet::forward_train`] (the official training losses `loss_rpn_cls`,
//! `loss_rpn_bbox`, `loss_cls`, `loss_bbox`, `loss_mask`).
//!
//! Training config: `{"type": "Panet", "preset": "panet_r50_fpn_2x_coco"}` or
//! `{"type": "Panet", "config": {..}}`, optionally with `"train": {..}`
//! ([`PanetTrainConfig`], the official `TRAIN.*` values by default).
//!
//! Ground truth comes from the batch's instances ([`Batch::instances`], e.g. COCO instance data
//! through the `CocoInstances` dataset, [`crate::coco_instances`]): each non-empty mask gives a
//! box (its pixel extent, Detectron's inclusive `x2`, `y2`), the class `class_id + 1` (0 is
//! PANet's background) and `iscrowd`. The trainer's pipeline has already resized and padded the
//! images, so each image is its own "original" (scale 1) and `im_info` is the batch's padded
//! size; the blob is zero-padded further to multiples of 32. Images are fed as Detectron's
//! blob: BGR minus the pixel means, no std.
//!
//! Random draws (RPN anchors, RoIs) come from a [`SeededSampler`] on the run's model-side
//! stream, stored back after each step, so a resumed run draws what the uninterrupted run
//! would have.
//!
//! Evaluation: mask AP and box AP of the detections (segkit-data's pycocotools-equal
//! [`CocoEvaluator`] with `iouType` `segm` and `bbox`, categories = the dataset's class ids;
//! ground-truth boxes are their masks' `toBbox`) in [`EvalResult::extra`] as `AP`, `AP50`,
//! `AP75` (masks) and `bbox_AP`, `bbox_AP50`, `bbox_AP75`, as fractions (0..1, like aAcc and
//! mIoU); the semantic fields (aAcc, mIoU,
//! mAcc) are NaN (undefined for PANet).

use std::any::Any;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_core::ops::detection::SeededSampler;
use segkit_data::metrics::coco::{CocoEvaluator, Detection, GroundTruth};
use segkit_data::{InstanceAnnotation, Rle, SegDataset};
use segkit_models::panet::{PanetTrainConfig, PanetTrainImage};
use segkit_models::{DataPreprocessorConfig, DatasetMeta, ModelConfig, Panet, PanetConfig};
use serde::{Deserialize, Serialize};

use crate::data::Batch;
use crate::eval::EvalResult;
use crate::losses::NamedLosses;
use crate::task::TrainModel;
use crate::TrainResult;

/// The training config's PANet model (`{"type": "Panet", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetSpec {
    /// A PANet preset name (`panet_r50_fpn_2x_coco`, `panet_r101_fpn_2x_coco`); used when
    /// `config` is absent.
    #[serde(default)]
    pub preset: Option<String>,
    /// The model config inline.
    #[serde(default)]
    pub config: Option<Box<PanetConfig>>,
    /// Training settings (default: the official ones for the model's classes).
    #[serde(default)]
    pub train: Option<PanetTrainConfig>,
}

impl PanetSpec {
    /// The model config: `config`, else `preset` (default `panet_r50_fpn_2x_coco`).
    pub fn model(&self) -> TrainResult<PanetConfig> {
        match (&self.config, &self.preset) {
            (Some(c), _) => Ok((**c).clone()),
            (None, p) => Ok(PanetConfig::preset(
                p.as_deref().unwrap_or("panet_r50_fpn_2x_coco"),
            )?),
        }
    }
}

const LOSS_NAMES: [&str; 5] = [
    "loss_rpn_cls",
    "loss_rpn_bbox",
    "loss_cls",
    "loss_bbox",
    "loss_mask",
];

/// PANet as a [`TrainModel`] (see the module docs).
pub struct PanetTask {
    cfg: PanetConfig,
    train: PanetTrainConfig,
    model: Panet,
    meta: DatasetMeta,
    pre: DataPreprocessorConfig,
    names: Vec<String>,
}

impl PanetTask {
    /// Builds the model with its variables in `vb`.
    pub fn new(spec: &PanetSpec, vb: VarBuilder<'_>) -> TrainResult<Self> {
        let cfg = spec.model()?;
        let train = spec
            .train
            .clone()
            .unwrap_or_else(|| PanetTrainConfig::official(cfg.num_classes()));
        let model = Panet::new(&cfg, vb)?;
        // The dataset's classes: PANet's without the background (class_id + 1 = PANet class).
        let mut meta = cfg.meta.clone();
        if !meta.classes.is_empty() {
            meta.classes.remove(0);
        }
        if !meta.palette.is_empty() {
            meta.palette.remove(0);
        }
        let m = cfg.input.pixel_means_bgr;
        let pre = DataPreprocessorConfig {
            mean: m,
            std: [1.0; 3],
            rgb: false,
            pad_val: 0.0,
            size: None,
            test_pad: None,
        };
        Ok(Self {
            cfg,
            train,
            model,
            meta,
            pre,
            names: LOSS_NAMES.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Panet {
        &self.model
    }
}

/// The initial value of PANet's variable `name` in a run from scratch: Detectron's
/// initialisation of the outputs — RPN conv / objectness / box deltas N(0, 0.01), box-head
/// class scores N(0, 0.01) and box deltas N(0, 0.001), zero biases (the official
/// `rpn_heads.py`, `fast_rcnn_heads.py`) — and, since the caffe body has no normalisation to
/// train (its affines are frozen at 1 / 0), Fixup's rule for it (Zhang et al., ICLR 2019): the
/// last convolution of every bottleneck (`conv3`) starts at zero, so every block starts as its
/// shortcut. Everything else as segkit's default (`segkit_train`'s `init` module: Kaiming-normal
/// convolutions, N(0, 0.01) fully-connected weights, norms 1 / 0).
pub fn init_value(name: &str, dims: &[usize], seed: u64) -> TrainResult<Tensor> {
    let matrix = name.ends_with(".weight") && dims.len() > 1;
    let normal = |std: f64| -> TrainResult<Tensor> {
        // The default scheme draws N(0, 0.01) for a matrix: drawn as one, then scaled.
        let n = dims.iter().product::<usize>();
        let t = crate::init::init_value(name, &[n, 1], seed, None)?;
        Ok((t * (std / 0.01))?.reshape(dims)?)
    };
    if matrix && (name.starts_with("RPN.") || name.starts_with("Box_Outs.cls_score.")) {
        return normal(0.01);
    }
    if matrix && name.starts_with("Box_Outs.bbox_pred.") {
        return normal(0.001);
    }
    if matrix && name.starts_with("Conv_Body.conv_body.") && name.ends_with(".conv3.weight") {
        return Ok(Tensor::zeros(dims, DType::F32, &Device::Cpu)?);
    }
    crate::init::init_value(name, dims, seed, None)
}

/// One image's gt from its instances (masks `h x w`): see the module docs.
pub fn train_image(instances: &[InstanceAnnotation], h: usize, w: usize) -> PanetTrainImage {
    let mut img = PanetTrainImage {
        size: (h, w),
        im_info: [h as f32, w as f32, 1.0],
        ..Default::default()
    };
    for a in instances {
        let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
        for (p, _) in a.mask.iter().enumerate().filter(|(_, &v)| v) {
            let (y, x) = (p / w, p % w);
            (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x), y2.max(y));
        }
        if x1 == usize::MAX || a.mask.len() != h * w {
            continue;
        }
        img.boxes.push([x1 as f32, y1 as f32, x2 as f32, y2 as f32]);
        img.classes.push(a.class_id as usize + 1);
        img.crowd.push(a.iscrowd);
        img.masks
            .push(a.mask.iter().map(|&v| u8::from(v)).collect());
    }
    img
}

impl TrainModel for PanetTask {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn model_config(&self) -> ModelConfig {
        ModelConfig::Panet(Box::new(self.cfg.clone()))
    }

    fn config_json(&self) -> TrainResult<String> {
        crate::checkpoint::to_json(&(&self.cfg, &self.train))
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes() - 1
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
        // Frozen affine norms and GroupNorm: no batch statistics.
        1
    }

    fn init_value(&self, name: &str, dims: &[usize], seed: u64) -> TrainResult<Tensor> {
        init_value(name, dims, seed)
    }

    fn losses(&self, batch: &Batch, _ignore_index: u16, rng: &mut u64) -> TrainResult<NamedLosses> {
        let (n, _, h, w) = batch.images.dims4()?;
        let images: Vec<PanetTrainImage> = (0..n)
            .map(|i| train_image(batch.instances.get(i).map_or(&[][..], |v| v), h, w))
            .collect();
        // The body needs sizes that are multiples of 32: zero padding below and right (the
        // images' `im_info` keeps the batch's size, as Detectron's blob).
        let (hp, wp) = (h.div_ceil(32) * 32, w.div_ceil(32) * 32);
        let x = batch
            .images
            .pad_with_zeros(2, 0, hp - h)?
            .pad_with_zeros(3, 0, wp - w)?;
        let mut sampler = SeededSampler::new(*rng);
        let l = self
            .model
            .forward_train(&x, &images, &self.train, &mut sampler)?;
        *rng = sampler.state();
        Ok(NamedLosses {
            total: l.total()?,
            items: l
                .named()
                .iter()
                .map(|(k, t)| (k.to_string(), (*t).clone()))
                .collect(),
        })
    }

    fn evaluate(
        &self,
        weights: HashMap<String, Tensor>,
        dataset: &dyn SegDataset,
        _batch_size: usize,
    ) -> TrainResult<EvalResult> {
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let model = Panet::new(&self.cfg, vb)?;
        evaluate_panet(&model, self.num_classes(), &self.meta, dataset)
    }

    fn activation_bytes_per_pixel(&self) -> u64 {
        // R-50 body (as a segmentor's ResNet-50 figure), a 256-channel pyramid at strides
        // 4..64 and the RPN on it; the RoI heads' activations do not scale with the image.
        30_000
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Mask and box AP of `model`'s detections on every image of `dataset` (see the module docs;
/// `k` classes, the dataset's class ids).
pub fn evaluate_panet(
    model: &Panet,
    k: usize,
    meta: &DatasetMeta,
    dataset: &dyn SegDataset,
) -> TrainResult<EvalResult> {
    let cats: Vec<u64> = (0..k as u64).collect();
    let (mut ap, mut box_ap) = (CocoEvaluator::new(&cats), CocoEvaluator::bbox(&cats));
    let n = dataset.len();
    for i in 0..n {
        let s = dataset.get(i)?;
        let (h, w, id) = (s.height, s.width, i as u64);
        ap.add_image(id, h, w)?;
        box_ap.add_image(id, h, w)?;
        for a in s.instances.iter().flatten() {
            let gt = GroundTruth {
                image_id: id,
                category_id: u64::from(a.class_id),
                mask: Rle::from_mask(&a.mask, h, w)?,
                iscrowd: a.iscrowd,
                area: None,
            };
            box_ap.add_ground_truth(gt.clone())?;
            ap.add_ground_truth(gt)?;
        }
        let rgb =
            image::RgbImage::from_raw(w as u32, h as u32, s.image.clone()).ok_or_else(|| {
                segkit_data::Error::BadFile {
                    path: s.path.clone(),
                    reason: "image buffer does not match its size".into(),
                }
            })?;
        let dets = model.detect(&rgb)?;
        for j in 0..dets.scores.len() {
            let category_id = dets.classes[j].saturating_sub(1) as u64;
            let score = f64::from(dets.scores[j]);
            ap.add_detection(Detection {
                image_id: id,
                category_id,
                mask: Rle::from_mask(&dets.masks[j], h, w)?,
                score,
            })?;
            // Detectron's json: [x1, y1, x2 - x1 + 1, y2 - y1 + 1].
            let [x1, y1, x2, y2] = dets.boxes[j].map(f64::from);
            box_ap.add_box_detection(
                id,
                category_id,
                [x1, y1, x2 - x1 + 1.0, y2 - y1 + 1.0],
                score,
            )?;
        }
    }
    let (r, b) = (ap.evaluate()?, box_ap.evaluate()?);
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("AP".to_string(), r.ap());
    extra.insert("AP50".to_string(), r.ap50());
    extra.insert("AP75".to_string(), r.ap75());
    extra.insert("bbox_AP".to_string(), b.ap());
    extra.insert("bbox_AP50".to_string(), b.ap50());
    extra.insert("bbox_AP75".to_string(), b.ap75());
    Ok(EvalResult {
        num_images: n,
        aacc: f64::NAN,
        miou: f64::NAN,
        macc: f64::NAN,
        classes: meta.classes.clone(),
        iou: vec![None; k],
        acc: vec![None; k],
        extra,
    })
}

#[cfg(test)]
mod tests;
