//! Evaluation: predictions of a model over a dataset, accumulated by mmseg's `IoUMetric`
//! ([`segkit_data::metrics::SegMetric`]) into aAcc, mIoU, mAcc and per-class IoU.
//!
//! When the model's test pipeline is the identity (no test resize, whole-image inference, no
//! padding, no TTA) consecutive images of one size are predicted as a batch; otherwise each
//! image goes through [`segkit_models::EncoderDecoder::predict_image`].

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use segkit_data::metrics::SegMetric;
use segkit_data::{Sample, SegDataset};
use serde::{Deserialize, Serialize};

use crate::TrainResult;
use segkit_models::EncoderDecoder;
use segkit_models::TestMode;

/// Evaluation results (fractions in `[0, 1]`; `null` in JSON where undefined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Number of images.
    pub num_images: usize,
    /// Overall pixel accuracy.
    #[serde(rename = "aAcc")]
    pub aacc: f64,
    /// Mean IoU over the classes present in prediction or ground truth.
    #[serde(rename = "mIoU")]
    pub miou: f64,
    /// Mean per-class accuracy.
    #[serde(rename = "mAcc")]
    pub macc: f64,
    /// Class names.
    pub classes: Vec<String>,
    /// Per-class IoU (`None` where the class is absent from both).
    pub iou: Vec<Option<f64>>,
    /// Per-class accuracy.
    pub acc: Vec<Option<f64>>,
    /// Further metrics of the model family, by name, as fractions (0..1) like the fields
    /// above (Gated-SCNN: the boundary F-score per tolerance, `bF_1px`, `bF_0.00375`, ...;
    /// classifiers `top1`; OneFormer `PQ`, `SQ`, `RQ`, `AP`, `AP50`; PANet `AP`, `AP50`,
    /// `AP75`, `bbox_AP`, ...); empty for a plain segmentor.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

impl EvalResult {
    /// A multi-line human-readable table: aAcc, mIoU, mAcc, then IoU per class.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} images: aAcc {:.2}  mIoU {:.2}  mAcc {:.2}\n",
            self.num_images,
            100.0 * self.aacc,
            100.0 * self.miou,
            100.0 * self.macc
        );
        let width = self
            .classes
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(5);
        s.push_str(&format!("{:width$}  {:>6}  {:>6}\n", "class", "IoU", "Acc"));
        for (k, name) in self.classes.iter().enumerate() {
            let f = |v: Option<f64>| match v {
                Some(v) => format!("{:6.2}", 100.0 * v),
                None => "   nan".into(),
            };
            s.push_str(&format!(
                "{name:width$}  {}  {}\n",
                f(self.iou.get(k).copied().flatten()),
                f(self.acc.get(k).copied().flatten())
            ));
        }
        for (k, v) in &self.extra {
            s.push_str(&format!("{k}  {:6.2}\n", 100.0 * v));
        }
        s
    }
}

fn opt(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

fn identity_pipeline(model: &EncoderDecoder) -> bool {
    let c = model.config();
    c.test_resize.is_none()
        && c.tta.is_none()
        && c.data_preprocessor.test_pad.is_none()
        && c.test_cfg == TestMode::Whole
}

/// Predicts every sample of `dataset` (batches of `batch_size` same-size images where the
/// test pipeline allows) and accumulates the metric. `progress` is called with the number of
/// images done.
///
/// Errors: [`segkit_data::Error::InvalidArgument`] for a `batch_size` of 0 or an empty
/// dataset (the mIoU of no images is undefined: an error, never a NaN).
pub fn evaluate(
    model: &EncoderDecoder,
    dataset: &dyn SegDataset,
    batch_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> TrainResult<EvalResult> {
    let info = dataset.info();
    let k = model.num_classes();
    let mut metric = SegMetric::new(k, info.ignore_index as i64)?;
    let n = dataset.len();
    if batch_size == 0 {
        return Err(segkit_data::Error::InvalidArgument(
            "evaluation batch size must be at least 1".into(),
        )
        .into());
    }
    if n == 0 {
        return Err(segkit_data::Error::InvalidArgument(
            "nothing to evaluate: the dataset has no images (the mIoU of no images is \
             undefined)"
                .into(),
        )
        .into());
    }
    let batched = identity_pipeline(model);
    let bs = batch_size;
    let mut i = 0;
    while i < n {
        let end = (i + bs).min(n);
        let samples: Vec<Sample> = (i..end)
            .map(|j| dataset.get(j))
            .collect::<segkit_data::Result<_>>()?;
        let preds = if batched {
            predict_batch(model, &samples)?
        } else {
            samples
                .iter()
                .map(|s| predict_one(model, s))
                .collect::<TrainResult<_>>()?
        };
        for (s, p) in samples.iter().zip(&preds) {
            let gt = s
                .semantic
                .as_ref()
                .ok_or_else(|| segkit_data::Error::BadFile {
                    path: s.path.clone(),
                    reason: "sample has no semantic ground truth".into(),
                })?;
            metric.update(p.as_slice(), gt.as_slice())?;
        }
        i = end;
        progress(i, n);
    }
    let r = metric.compute();
    Ok(EvalResult {
        num_images: n,
        aacc: r.aacc,
        miou: r.miou,
        macc: r.macc,
        classes: if info.classes.len() == k {
            info.classes.clone()
        } else {
            (0..k).map(|c| c.to_string()).collect()
        },
        iou: r.iou.iter().copied().map(opt).collect(),
        acc: r.acc.iter().copied().map(opt).collect(),
        extra: BTreeMap::new(),
    })
}

/// Class maps (u8) of samples, batching runs of equal size.
fn predict_batch(model: &EncoderDecoder, samples: &[Sample]) -> TrainResult<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(samples.len());
    let mut i = 0;
    while i < samples.len() {
        let (w, h) = (samples[i].width, samples[i].height);
        let mut j = i + 1;
        while j < samples.len() && (samples[j].width, samples[j].height) == (w, h) {
            j += 1;
        }
        let pre = &model.config().data_preprocessor;
        let items = samples[i..j]
            .iter()
            .map(|s| segkit_data::augment::Augmented::new(s.clone()))
            .collect::<segkit_data::Result<Vec<_>>>()?;
        let batch = crate::data::collate(&items, pre, None, 255, model.device())?;
        let pred = model
            .predict(&batch.images)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::U32)?;
        let v = pred.flatten_all()?.to_vec1::<u32>()?;
        for m in v.chunks_exact(w * h) {
            out.push(m.iter().map(|&c| c.min(255) as u8).collect());
        }
        i = j;
    }
    Ok(out)
}

fn predict_one(model: &EncoderDecoder, s: &Sample) -> TrainResult<Vec<u8>> {
    let img = image::RgbImage::from_raw(s.width as u32, s.height as u32, s.image.clone())
        .ok_or_else(|| segkit_data::Error::BadFile {
            path: s.path.clone(),
            reason: "image buffer does not match its size".into(),
        })?;
    let p = model.predict_image(&image::DynamicImage::ImageRgb8(img))?;
    Ok(p.class_ids()?.iter().map(|&c| c.min(255) as u8).collect())
}

/// A copy of `t` detached from any graph (eval models are built from these).
pub(crate) fn detached_copy(t: &Tensor) -> TrainResult<Tensor> {
    Ok(t.detach().copy()?)
}
