//! Semantic-segmentation metrics: aAcc, mIoU, mAcc, mDice, mFscore, mPrecision, mRecall.
//!
//! Matches mmsegmentation 1.2.2's `IoUMetric` (`mmseg/evaluation/metrics/iou_metric.py`):
//! per image, `intersect_and_union` drops the pixels whose ground truth is `ignore_index`
//! and histograms the intersection, the prediction and the ground truth over
//! `0..num_classes` (values outside that range fall out of the histograms, as with
//! `torch.histc`); the areas are summed over all images and only then turned into metrics
//! (`total_area_to_metrics`); the `m*` summaries are `np.nanmean` over the classes, where a class
//! absent from both prediction and ground truth is NaN.
//!
//! Two documented differences, both invisible below 2^24 pixels per class: areas are
//! accumulated in `u64` and metrics computed in `f64` (mmseg uses float32 tensors), and the
//! results are fractions (mmseg reports `round(100 * x, 2)`).
//!
//! `reduce_zero_label` applies mmseg's `LoadAnnotations(reduce_zero_label=True)` to the ground
//! truth (uint8 semantics): 0 and 255 become 255, every other value `v` becomes `v - 1`.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Per-class pixel areas (`intersect_and_union`'s four histograms).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AreaStats {
    /// Pixels where prediction and ground truth agree, per class.
    pub intersect: Vec<u64>,
    /// `pred + label - intersect`, per class.
    pub union: Vec<u64>,
    /// Pixels predicted as the class (ignored pixels excluded).
    pub pred: Vec<u64>,
    /// Ground-truth pixels of the class.
    pub label: Vec<u64>,
}

impl AreaStats {
    fn zeros(n: usize) -> Self {
        AreaStats {
            intersect: vec![0; n],
            union: vec![0; n],
            pred: vec![0; n],
            label: vec![0; n],
        }
    }

    fn add(&mut self, o: &AreaStats) {
        for (a, b) in [
            (&mut self.intersect, &o.intersect),
            (&mut self.union, &o.union),
            (&mut self.pred, &o.pred),
            (&mut self.label, &o.label),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += *y;
            }
        }
    }
}

/// The metrics of [`SegMetric::compute`]: fractions in `[0, 1]`, NaN where undefined.
#[derive(Clone, Debug, PartialEq)]
pub struct SegMetricResult {
    /// Overall pixel accuracy: `sum(intersect) / sum(label)`.
    pub aacc: f64,
    /// NaN-mean of [`Self::iou`].
    pub miou: f64,
    /// NaN-mean of [`Self::acc`].
    pub macc: f64,
    /// NaN-mean of [`Self::dice`].
    pub mdice: f64,
    /// NaN-mean of [`Self::fscore`].
    pub mfscore: f64,
    /// NaN-mean of [`Self::precision`].
    pub mprecision: f64,
    /// NaN-mean of [`Self::recall`].
    pub mrecall: f64,
    /// Per-class IoU `intersect / union`.
    pub iou: Vec<f64>,
    /// Per-class accuracy `intersect / label` (equal to the recall).
    pub acc: Vec<f64>,
    /// Per-class Dice `2 intersect / (pred + label)`.
    pub dice: Vec<f64>,
    /// Per-class F-score `(1 + b^2) p r / (b^2 p + r)`.
    pub fscore: Vec<f64>,
    /// Per-class precision `intersect / pred`.
    pub precision: Vec<f64>,
    /// Per-class recall `intersect / label`.
    pub recall: Vec<f64>,
}

/// `np.nanmean`: the mean of the non-NaN values, NaN if there are none.
pub fn nanmean(v: &[f64]) -> f64 {
    let (s, n) = v
        .iter()
        .filter(|x| !x.is_nan())
        .fold((0.0, 0usize), |(s, n), &x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Accumulating semantic-segmentation metric (mmseg's `IoUMetric`).
///
/// ```
/// use segkit_data::metrics::SegMetric;
/// let mut m = SegMetric::new(3, 255)?;
/// m.update(&[0u8, 1, 2, 2], &[0u8, 1, 1, 255])?; // the last pixel is ignored
/// let r = m.compute();
/// assert_eq!(r.aacc, 2.0 / 3.0);
/// assert_eq!(r.iou, vec![1.0, 0.5, 0.0]);
/// assert!((r.miou - 0.5).abs() < 1e-12);
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SegMetric {
    num_classes: usize,
    ignore_index: i64,
    reduce_zero_label: bool,
    beta: f64,
    total: AreaStats,
    num_images: usize,
}

impl SegMetric {
    /// A metric over classes `0..num_classes` (at least 2); ground-truth pixels equal to
    /// `ignore_index` (mmseg's default: 255) are left out.
    pub fn new(num_classes: usize, ignore_index: i64) -> Result<Self> {
        if num_classes < 2 {
            // torch.histc(min=0, max=0) switches to the data's own range: no fixed meaning.
            return Err(Error::InvalidArgument(format!(
                "SegMetric needs at least 2 classes, got {num_classes}"
            )));
        }
        Ok(SegMetric {
            num_classes,
            ignore_index,
            reduce_zero_label: false,
            beta: 1.0,
            total: AreaStats::zeros(num_classes),
            num_images: 0,
        })
    }

    /// Applies mmseg's `reduce_zero_label` to every ground truth (see the module docs).
    pub fn with_reduce_zero_label(mut self, reduce: bool) -> Self {
        self.reduce_zero_label = reduce;
        self
    }

    /// The F-score's `beta` (mmseg's default: 1).
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Number of images accumulated so far.
    pub fn num_images(&self) -> usize {
        self.num_images
    }

    /// The areas summed over all images so far.
    pub fn totals(&self) -> &AreaStats {
        &self.total
    }

    /// Forgets all accumulated images.
    pub fn reset(&mut self) {
        self.total = AreaStats::zeros(self.num_classes);
        self.num_images = 0;
    }

    /// The four areas of one image (`IoUMetric.intersect_and_union`), `reduce_zero_label`
    /// applied to `gt` if set. `pred` and `gt` are class maps of equal length.
    pub fn intersect_and_union<P, G>(&self, pred: &[P], gt: &[G]) -> Result<AreaStats>
    where
        P: Copy + Into<i64>,
        G: Copy + Into<i64>,
    {
        if pred.len() != gt.len() {
            return Err(segkit_core::Error::shape(
                "prediction vs ground truth",
                &[gt.len()],
                &[pred.len()],
            ));
        }
        let n = self.num_classes as i64;
        let mut s = AreaStats::zeros(self.num_classes);
        for (&p, &g) in pred.iter().zip(gt) {
            let p: i64 = p.into();
            let mut g: i64 = g.into();
            if self.reduce_zero_label {
                g = match g {
                    0 | 255 => 255,
                    v => v - 1,
                };
            }
            if g == self.ignore_index {
                continue;
            }
            let p_in = (0..n).contains(&p);
            if p_in {
                s.pred[p as usize] += 1;
            }
            if (0..n).contains(&g) {
                s.label[g as usize] += 1;
                if p == g {
                    s.intersect[g as usize] += 1;
                }
            }
        }
        for c in 0..self.num_classes {
            s.union[c] = s.pred[c] + s.label[c] - s.intersect[c];
        }
        Ok(s)
    }

    /// Adds one image: a predicted and a ground-truth class map of equal length.
    pub fn update<P, G>(&mut self, pred: &[P], gt: &[G]) -> Result<()>
    where
        P: Copy + Into<i64>,
        G: Copy + Into<i64>,
    {
        let s = self.intersect_and_union(pred, gt)?;
        self.total.add(&s);
        self.num_images += 1;
        Ok(())
    }

    /// Adds one image given as integer tensors of one shape (e.g. `(H, W)` or `(1, H, W)`;
    /// dtypes u8 / u32 / i16 / i32 / i64, on any device).
    pub fn update_tensor(&mut self, pred: &Tensor, gt: &Tensor) -> Result<()> {
        if pred.dims() != gt.dims() {
            return Err(segkit_core::Error::shape(
                "prediction vs ground truth",
                gt.dims(),
                pred.dims(),
            ));
        }
        let p = labels_of(pred, "prediction")?;
        let g = labels_of(gt, "ground truth")?;
        self.update(&p, &g)
    }

    /// The metrics over everything accumulated (`IoUMetric.total_area_to_metrics` + nanmean).
    pub fn compute(&self) -> SegMetricResult {
        metrics_from_areas(&self.total, self.beta)
    }
}

fn labels_of(t: &Tensor, what: &str) -> Result<Vec<i64>> {
    match t.dtype() {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => {}
        d => {
            return Err(Error::InvalidArgument(format!(
                "{what} class map must have an integer dtype, got {d:?}"
            )))
        }
    }
    let t = t.flatten_all()?.to_device(&candle_core::Device::Cpu)?;
    Ok(t.to_dtype(DType::I64)?.to_vec1::<i64>()?)
}

/// mmseg's `total_area_to_metrics` for mIoU, mDice and mFscore at once, plus the NaN-means.
pub fn metrics_from_areas(a: &AreaStats, beta: f64) -> SegMetricResult {
    let div = |x: &[u64], y: &[u64], k: f64| -> Vec<f64> {
        x.iter()
            .zip(y)
            .map(|(&x, &y)| k * x as f64 / y as f64)
            .collect()
    };
    let iou = div(&a.intersect, &a.union, 1.0);
    let acc = div(&a.intersect, &a.label, 1.0);
    let pl: Vec<u64> = a.pred.iter().zip(&a.label).map(|(p, l)| p + l).collect();
    let dice = div(&a.intersect, &pl, 2.0);
    let precision = div(&a.intersect, &a.pred, 1.0);
    let recall = acc.clone();
    let b2 = beta * beta;
    let fscore: Vec<f64> = precision
        .iter()
        .zip(&recall)
        .map(|(&p, &r)| (1.0 + b2) * (p * r) / (b2 * p + r))
        .collect();
    let si: u64 = a.intersect.iter().sum();
    let sl: u64 = a.label.iter().sum();
    SegMetricResult {
        aacc: si as f64 / sl as f64,
        miou: nanmean(&iou),
        macc: nanmean(&acc),
        mdice: nanmean(&dice),
        mfscore: nanmean(&fscore),
        mprecision: nanmean(&precision),
        mrecall: nanmean(&recall),
        iou,
        acc,
        dice,
        fscore,
        precision,
        recall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_and_ignore() -> Result<()> {
        let m = SegMetric::new(3, 255)?;
        // pred 7 is out of range: counted nowhere; gt 255 ignored; gt 9 out of range
        let s = m.intersect_and_union(&[0u32, 7, 1, 2, 2], &[0u32, 0, 255, 9, 2])?;
        assert_eq!(s.intersect, vec![1, 0, 1]);
        assert_eq!(s.pred, vec![1, 0, 2]);
        assert_eq!(s.label, vec![2, 0, 1]);
        assert_eq!(s.union, vec![2, 0, 2]);
        let r = metrics_from_areas(&s, 1.0);
        assert!(r.iou[1].is_nan());
        assert_eq!(r.aacc, 2.0 / 3.0);
        Ok(())
    }

    #[test]
    fn reduce_zero_label() -> Result<()> {
        let m = SegMetric::new(3, 255)?.with_reduce_zero_label(true);
        let s = m.intersect_and_union(&[0u8, 0, 1, 2], &[0u8, 1, 2, 255])?;
        assert_eq!(s.label, vec![1, 1, 0]);
        assert_eq!(s.intersect, vec![1, 1, 0]);
        Ok(())
    }

    #[test]
    fn errors() -> Result<()> {
        assert!(SegMetric::new(1, 255).is_err());
        let mut m = SegMetric::new(2, 255)?;
        assert!(m.update(&[0u8], &[0u8, 1]).is_err());
        let f = Tensor::zeros((2, 2), DType::F32, &candle_core::Device::Cpu)?;
        assert!(m.update_tensor(&f, &f).is_err());
        let a = Tensor::zeros((2, 2), DType::U8, &candle_core::Device::Cpu)?;
        let b = Tensor::zeros((2, 2), DType::I64, &candle_core::Device::Cpu)?;
        m.update_tensor(&a, &b)?;
        assert_eq!(m.compute().aacc, 1.0);
        Ok(())
    }
}
