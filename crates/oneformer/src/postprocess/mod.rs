//! OneFormer post-processing: semantic, instance and panoptic segmentation from the class and
//! mask predictions of the transformer decoder.
//!
//! Matches transformers 5.24.0 `models/oneformer/image_processing_oneformer.py`:
//! `OneFormerImageProcessor.post_process_semantic_segmentation`,
//! `post_process_instance_segmentation` and `post_process_panoptic_segmentation`, with the
//! helpers `remove_low_and_no_objects`, `check_segment_validity`, `compute_segments`,
//! `binary_mask_to_rle` and `convert_segmentation_to_rle`. Behaviours of the reference that a
//! reader might not expect, all reproduced:
//!
//! - Resizing uses torchvision's `resize` on float tensors, i.e. bilinear **with antialiasing**
//!   ([`resize_bilinear_antialias`]); growing, it equals plain bilinear up to rounding, but
//!   shrinking, it averages over the whole footprint.
//! - Semantic: class softmax without the null class, mask sigmoid, `einsum("bqc,bqhw->bchw")`,
//!   then the per-class maps are resized and arg-maxed.
//! - Instance: the `Q` best `(query, class)` pairs by class probability come from
//!   `topk(sorted=False)`, whose CPU order decides segment ids ([`topk_unsorted`]). The masks
//!   that go into `compute_segments` are the **mask logits** (not their sigmoid), resized, then
//!   multiplied by the class score; `mask_threshold` and the arg-max apply to those products. A
//!   segment's score is the class probability alone. `task = Panoptic` keeps thing classes only
//!   (HF's `metadata["thing_ids"]`, here [`InstanceConfig::thing_ids`]); the ADE20K relabelling
//!   (label -> its index in `thing_ids`) applies with `is_demo = false`, task `Instance` and an
//!   ADE20K class-info file ([`InstanceConfig::ade20k_thing_remap`]). (HF evaluates
//!   `"ade20k" in self.class_info_file` for every image with candidates, so its instance
//!   post-processing raises a `TypeError` on a processor built without a class-info file.)
//! - Panoptic: score and label are the softmax maximum over all `K + 1` classes; queries whose
//!   label is the null class or whose score is not above `threshold` are dropped; the masks are
//!   sigmoid probabilities, resized, then multiplied by the score.
//! - `compute_segments`: `mask_threshold` is applied to the score-multiplied masks, and the
//!   area ratio is an `f32` division compared in `f64` (4 of 5 pixels passes a threshold of
//!   0.8). Pixels of no segment are `0`; an image without any candidate gets a map filled with
//!   `-1` and no segments (HF returns a float map then), even with `return_coco_annotation`.
//! - Score comparisons against `threshold` / `mask_threshold` happen in `f32`; segment scores
//!   are rounded to 6 decimals (`round(score, 6)`).
//!
//! Heavy work (softmax, sigmoid, the class-mask product, resizing, the score multiplication) is
//! done with tensor ops on the inputs' device; arg-max, areas and segment bookkeeping run on CPU
//! vectors.
//!
//! # Shapes
//! - `class_queries_logits`: `B x Q x (K + 1)` (the last class is "no object").
//! - `masks_queries_logits`: `B x Q x h x w`.
//! - `target_sizes`: `B` pairs `(height, width)`; without them results are `h x w`.
//! - [`SemanticResult`]: `height * width` class ids and `K x height x width` scores per image.
//! - [`SegmentationResult`]: `height * width` segment ids per image, row-major.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_oneformer::postprocess::{post_process_panoptic_segmentation, PanopticConfig};
//!
//! let dev = Device::Cpu;
//! let class_logits = Tensor::zeros((1, 3, 5), candle_core::DType::F32, &dev)?; // K = 4
//! let mask_logits = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &dev)?;
//! let res = post_process_panoptic_segmentation(
//!     &class_logits,
//!     &mask_logits,
//!     &PanopticConfig::default(),
//!     Some(&[(16, 16)]),
//! )?;
//! // Uniform class scores (0.2) never pass the 0.5 threshold: no segments, a map of -1.
//! assert!(res[0].segments.is_empty());
//! assert_eq!((res[0].height, res[0].width), (16, 16));
//! assert!(res[0].segmentation.iter().all(|&v| v == -1));
//! # Ok::<(), segkit_oneformer::Error>(())
//! ```

mod instances;
mod resize;
mod select;

use std::collections::BTreeSet;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::ops::{sigmoid, softmax_last_dim};
use serde::{Deserialize, Serialize};

pub use instances::{instance_inference, InstanceDetection, InstanceInferenceConfig};
pub use resize::{resize_bilinear_antialias, resize_bilinear_antialias_fallback};
use select::argmax_rows;
pub use select::topk_unsorted;

use crate::{Error, Result};

/// Which task token the model was run with; it selects branches of the instance
/// post-processing (HF's `task_type` string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    /// "the task is semantic": no task-specific branch.
    Semantic,
    /// "the task is instance" (HF's default): the ADE20K relabelling may apply.
    #[default]
    Instance,
    /// "the task is panoptic": only thing classes are kept.
    Panoptic,
}

/// Parameters of [`post_process_instance_segmentation`], with HF's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceConfig {
    /// The task the model ran (HF `task_type`, default instance).
    pub task: TaskType,
    /// Demo mode: keep only candidates whose class probability is above `threshold`
    /// (HF `is_demo`, default true); otherwise all `Q` top-k candidates are kept.
    pub is_demo: bool,
    /// Class-probability threshold of demo mode (default 0.5; compared in `f32`).
    pub threshold: f64,
    /// Threshold on the score-multiplied mask logits that defines a candidate's own area
    /// (default 0.5).
    pub mask_threshold: f64,
    /// Minimum fraction of a candidate's own area that it must win in the arg-max for its
    /// segment to exist (default 0.8).
    pub overlap_mask_area_threshold: f64,
    /// Thing class ids (HF `metadata["thing_ids"]` from the class-info file); required with
    /// `task = Panoptic` and with `ade20k_thing_remap`.
    pub thing_ids: Option<Vec<u32>>,
    /// Relabel each segment by the index of its class in `thing_ids`, which HF does when the
    /// processor's `class_info_file` contains "ade20k", `is_demo` is false and the task is
    /// instance (default false).
    pub ade20k_thing_remap: bool,
    /// Also return the segment map run-length encoded (HF `return_coco_annotation`).
    pub return_coco_annotation: bool,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            task: TaskType::Instance,
            is_demo: true,
            threshold: 0.5,
            mask_threshold: 0.5,
            overlap_mask_area_threshold: 0.8,
            thing_ids: None,
            ade20k_thing_remap: false,
            return_coco_annotation: false,
        }
    }
}

/// Parameters of [`post_process_panoptic_segmentation`], with HF's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PanopticConfig {
    /// Minimum (exclusive) class probability of a kept query (default 0.5; compared in `f32`).
    pub threshold: f64,
    /// Threshold on the score-multiplied mask probabilities that defines a query's own area
    /// (default 0.5).
    pub mask_threshold: f64,
    /// Minimum fraction of a query's own area that it must win in the arg-max for its segment
    /// to exist (default 0.8).
    pub overlap_mask_area_threshold: f64,
    /// Classes whose segments are fused into one segment per image ("stuff"; default none).
    pub label_ids_to_fuse: BTreeSet<u32>,
}

impl Default for PanopticConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            mask_threshold: 0.5,
            overlap_mask_area_threshold: 0.8,
            label_ids_to_fuse: BTreeSet::new(),
        }
    }
}

/// Semantic segmentation of one image.
#[derive(Debug, Clone)]
pub struct SemanticResult {
    /// Map height.
    pub height: usize,
    /// Map width.
    pub width: usize,
    /// Class id per pixel, row-major (`height * width`; HF's `segmentation`).
    pub segmentation: Vec<u32>,
    /// Per-class scores, `K x height x width` f32 on the inputs' device (HF's
    /// `segmentation_scores`).
    pub scores: Tensor,
}

/// One segment of an instance or panoptic result (an entry of HF's `segments_info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Segment id: its value in the segmentation map (1, 2, ...).
    pub id: i32,
    /// Class id (after the ADE20K relabelling where that applies).
    pub label_id: u32,
    /// Whether the class is in `label_ids_to_fuse` (always false for instance results).
    pub was_fused: bool,
    /// Class probability of the query, rounded to 6 decimals as HF does.
    pub score: f64,
}

/// Instance or panoptic segmentation of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationResult {
    /// Map height.
    pub height: usize,
    /// Map width.
    pub width: usize,
    /// Segment id per pixel, row-major: 0 where no segment won, all -1 when the image had no
    /// candidate at all.
    pub segmentation: Vec<i32>,
    /// The segments, in the order HF lists them (fused segments may repeat an id).
    pub segments: Vec<Segment>,
    /// With `return_coco_annotation`, HF's run-length encoding of the map
    /// ([`convert_segmentation_to_rle`]); `None` otherwise and for images without candidates.
    pub rle: Option<Vec<Vec<usize>>>,
}

impl SegmentationResult {
    fn empty(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            segmentation: vec![-1; height * width],
            segments: Vec::new(),
            rle: None,
        }
    }
}

/// HF's `binary_mask_to_rle`: runs of ones of a row-major binary mask as
/// `[start_1, length_1, start_2, length_2, ..]` with 1-based starts (not pycocotools' format).
///
/// ```
/// use segkit_oneformer::postprocess::binary_mask_to_rle;
/// assert_eq!(binary_mask_to_rle(&[false, true, true, false, true]), vec![2, 2, 5, 1]);
/// ```
pub fn binary_mask_to_rle(mask: &[bool]) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut prev = false;
    for (i, &m) in mask.iter().chain(std::iter::once(&false)).enumerate() {
        if m != prev {
            if m {
                runs.push(i + 1);
            } else if let Some(&start) = runs.last() {
                runs.push(i + 1 - start);
            }
            prev = m;
        }
    }
    runs
}

/// HF's `convert_segmentation_to_rle`: one [`binary_mask_to_rle`] per distinct value of the map,
/// in increasing value order (the background 0 included).
pub fn convert_segmentation_to_rle(segmentation: &[i32]) -> Vec<Vec<usize>> {
    let ids: BTreeSet<i32> = segmentation.iter().copied().collect();
    ids.into_iter()
        .map(|id| {
            let mask: Vec<bool> = segmentation.iter().map(|&v| v == id).collect();
            binary_mask_to_rle(&mask)
        })
        .collect()
}

/// Validated dims of the two inputs: `(B, Q, K, h, w)` with `K` real classes.
fn input_dims(
    class_logits: &Tensor,
    mask_logits: &Tensor,
) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, q, k1) = match *class_logits.dims() {
        [b, q, k1] => (b, q, k1),
        ref d => {
            return Err(Error::InvalidArgument(format!(
                "class_queries_logits must be B x Q x (K + 1), got shape {d:?}"
            )))
        }
    };
    let (h, w) = match *mask_logits.dims() {
        [mb, mq, h, w] if mb == b && mq == q => (h, w),
        ref d => {
            return Err(Error::InvalidArgument(format!(
                "masks_queries_logits must be {b} x {q} x h x w (B x Q from class_queries_logits), \
                 got shape {d:?}"
            )))
        }
    };
    if k1 < 2 || q == 0 || h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "post-processing needs at least one class besides \"no object\", one query and a \
             non-empty mask; got K + 1 = {k1}, Q = {q}, masks {h}x{w}"
        )));
    }
    Ok((b, q, k1 - 1, h, w))
}

/// The target size of image `i`, or `None` without target sizes; checks the batch length.
fn target_size(
    target_sizes: Option<&[(usize, usize)]>,
    batch: usize,
    i: usize,
) -> Result<Option<(usize, usize)>> {
    match target_sizes {
        None => Ok(None),
        Some(s) if s.len() != batch => Err(Error::InvalidArgument(format!(
            "got {} target sizes for a batch of {batch}",
            s.len()
        ))),
        Some(s) => {
            let (h, w) = s[i];
            if h == 0 || w == 0 {
                return Err(Error::InvalidArgument(format!(
                    "target size {h}x{w} of image {i} is empty"
                )));
            }
            Ok(Some((h, w)))
        }
    }
}

fn to_cpu_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Python's `round(x, 6)` of an `f32` score (correctly rounded decimal, ties to even).
fn round6(x: f32) -> f64 {
    let x = x as f64;
    format!("{x:.6}").parse().unwrap_or(x)
}

/// Semantic segmentation maps: HF's `post_process_semantic_segmentation` (with
/// `return_segmentation_scores=True`, so both the class map and the scores come back).
pub fn post_process_semantic_segmentation(
    class_queries_logits: &Tensor,
    masks_queries_logits: &Tensor,
    target_sizes: Option<&[(usize, usize)]>,
) -> Result<Vec<SemanticResult>> {
    let (b, q, k, h, w) = input_dims(class_queries_logits, masks_queries_logits)?;
    let classes = softmax_last_dim(&class_queries_logits.to_dtype(DType::F32)?.contiguous()?)?
        .narrow(2, 0, k)?;
    let probs = sigmoid(&masks_queries_logits.to_dtype(DType::F32)?)?;
    // einsum("bqc, bqhw -> bchw")
    let seg = classes
        .transpose(1, 2)?
        .contiguous()?
        .matmul(&probs.reshape((b, q, h * w))?.contiguous()?)?
        .reshape((b, k, h, w))?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let (scores, (oh, ow)) = match target_size(target_sizes, b, i)? {
            Some(size) => (
                resize_bilinear_antialias(&seg.narrow(0, i, 1)?, size)?.squeeze(0)?,
                size,
            ),
            None => (seg.i(i)?, (h, w)),
        };
        let data = to_cpu_vec(&scores)?;
        out.push(SemanticResult {
            height: oh,
            width: ow,
            segmentation: argmax_rows(&data, k, oh * ow),
            scores,
        });
    }
    Ok(out)
}

/// HF's `compute_segments` for one image: `masks` (`N x h x w`, probabilities or logits) with
/// the candidates' scores and labels.
fn compute_segments(
    masks: &Tensor,
    scores: &[f32],
    labels: &[u32],
    mask_threshold: f64,
    overlap_mask_area_threshold: f64,
    label_ids_to_fuse: &BTreeSet<u32>,
    target: Option<(usize, usize)>,
) -> Result<SegmentationResult> {
    let n = scores.len();
    let (_, h, w) = masks.dims3()?;
    let (height, width) = target.unwrap_or((h, w));
    let hw = height * width;
    // The masks at the target size times their scores (`masks * scores[:, None, None]`), on
    // the host: one N x H x W buffer (the resized planes, scaled in place) rather than the
    // resized tensor, the product and its host copy (3 x 184 MB for 150 masks at 640x480).
    let mut probs = match target {
        Some(size) => match resize::resize_planes_f32(masks, size)? {
            Some(v) => v,
            None => to_cpu_vec(&resize_bilinear_antialias(&masks.unsqueeze(0)?, size)?)?,
        },
        None => to_cpu_vec(masks)?,
    };
    if probs.len() != n * hw {
        return Err(Error::InvalidArgument(format!(
            "compute_segments: {n} scores for {} mask values of {height}x{width}",
            probs.len()
        )));
    }
    for (plane, &sc) in probs.chunks_exact_mut(hw.max(1)).zip(scores) {
        plane.iter_mut().for_each(|v| *v *= sc);
    }
    let mask_labels = argmax_rows(&probs, n, hw);
    let mut won = vec![0usize; n];
    for &l in &mask_labels {
        won[l as usize] += 1;
    }
    let thr = mask_threshold as f32;
    let mut segment_of = vec![0i32; n];
    let mut segments = Vec::new();
    let mut stuff_memory: Vec<(u32, i32)> = Vec::new();
    let mut current = 0i32;
    for k in 0..n {
        let label = labels[k];
        let should_fuse = label_ids_to_fuse.contains(&label);
        let original = probs[k * hw..(k + 1) * hw]
            .iter()
            .filter(|&&v| v >= thr)
            .count();
        let mut exists = won[k] > 0 && original > 0;
        if exists {
            // torch: int64 / int64 -> float32, compared to a Python float.
            let ratio = won[k] as f32 / original as f32;
            exists = (ratio as f64) > overlap_mask_area_threshold;
        }
        if !exists {
            continue;
        }
        current = match stuff_memory.iter().find(|(l, _)| *l == label) {
            Some(&(_, id)) => id,
            None => current + 1,
        };
        segment_of[k] = current;
        segments.push(Segment {
            id: current,
            label_id: label,
            was_fused: should_fuse,
            score: round6(scores[k]),
        });
        if should_fuse {
            stuff_memory.push((label, current));
        }
    }
    let segmentation = mask_labels
        .iter()
        .map(|&l| segment_of[l as usize])
        .collect();
    Ok(SegmentationResult {
        height,
        width,
        segmentation,
        segments,
        rle: None,
    })
}

/// Instance segmentation: HF's `post_process_instance_segmentation`.
pub fn post_process_instance_segmentation(
    class_queries_logits: &Tensor,
    masks_queries_logits: &Tensor,
    cfg: &InstanceConfig,
    target_sizes: Option<&[(usize, usize)]>,
) -> Result<Vec<SegmentationResult>> {
    let (b, q, k, h, w) = input_dims(class_queries_logits, masks_queries_logits)?;
    let probs = softmax_last_dim(&class_queries_logits.to_dtype(DType::F32)?.contiguous()?)?
        .narrow(2, 0, k)?;
    let thing_ids = |why: &str| {
        cfg.thing_ids.as_deref().ok_or_else(|| {
            Error::InvalidArgument(format!("InstanceConfig::thing_ids is required {why}"))
        })
    };
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let target = target_size(target_sizes, b, i)?;
        let scores = to_cpu_vec(&probs.i(i)?)?; // Q x K, row-major
        let mut cand: Vec<(f32, u32, u32)> = topk_unsorted(&scores, q)
            .into_iter()
            .map(|j| (scores[j], (j % k) as u32, (j / k) as u32))
            .collect();
        if cfg.is_demo {
            let thr = cfg.threshold as f32;
            cand.retain(|c| c.0 > thr);
        }
        if cfg.task == TaskType::Panoptic {
            let things = thing_ids("with the panoptic task")?;
            cand.retain(|c| things.contains(&c.1));
        }
        if cand.is_empty() {
            let (oh, ow) = target.unwrap_or((h, w));
            out.push(SegmentationResult::empty(oh, ow));
            continue;
        }
        if cfg.ade20k_thing_remap && !cfg.is_demo && cfg.task == TaskType::Instance {
            let things = thing_ids("for the ADE20K relabelling")?;
            for c in cand.iter_mut() {
                let pos = things.iter().position(|&t| t == c.1).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "ADE20K relabelling: class {} is not in thing_ids",
                        c.1
                    ))
                })?;
                c.1 = pos as u32;
            }
        }
        let queries: Vec<u32> = cand.iter().map(|c| c.2).collect();
        let idx = Tensor::new(queries.as_slice(), masks_queries_logits.device())?;
        let masks = masks_queries_logits
            .i(i)?
            .to_dtype(DType::F32)?
            .index_select(&idx, 0)?;
        let scores: Vec<f32> = cand.iter().map(|c| c.0).collect();
        let labels: Vec<u32> = cand.iter().map(|c| c.1).collect();
        let mut res = compute_segments(
            &masks,
            &scores,
            &labels,
            cfg.mask_threshold,
            cfg.overlap_mask_area_threshold,
            &BTreeSet::new(),
            target,
        )?;
        if cfg.return_coco_annotation {
            res.rle = Some(convert_segmentation_to_rle(&res.segmentation));
        }
        out.push(res);
    }
    Ok(out)
}

/// Panoptic segmentation: HF's `post_process_panoptic_segmentation`.
pub fn post_process_panoptic_segmentation(
    class_queries_logits: &Tensor,
    masks_queries_logits: &Tensor,
    cfg: &PanopticConfig,
    target_sizes: Option<&[(usize, usize)]>,
) -> Result<Vec<SegmentationResult>> {
    let (b, q, k, h, w) = input_dims(class_queries_logits, masks_queries_logits)?;
    let probs = to_cpu_vec(&softmax_last_dim(
        &class_queries_logits.to_dtype(DType::F32)?.contiguous()?,
    )?)?;
    let mask_probs = sigmoid(&masks_queries_logits.to_dtype(DType::F32)?)?;
    let thr = cfg.threshold as f32;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let target = target_size(target_sizes, b, i)?;
        // softmax(..).max(-1): the first maximum over all K + 1 classes.
        let mut kept: Vec<(u32, f32, u32)> = Vec::new();
        for qi in 0..q {
            let row = &probs[(i * q + qi) * (k + 1)..(i * q + qi + 1) * (k + 1)];
            let (label, score) = argmax_rows(row, k + 1, 1)
                .first()
                .map(|&l| (l, row[l as usize]))
                .unwrap_or((0, row[0]));
            if label as usize != k && score > thr {
                kept.push((qi as u32, score, label));
            }
        }
        if kept.is_empty() {
            let (oh, ow) = target.unwrap_or((h, w));
            out.push(SegmentationResult::empty(oh, ow));
            continue;
        }
        let queries: Vec<u32> = kept.iter().map(|c| c.0).collect();
        let idx = Tensor::new(queries.as_slice(), mask_probs.device())?;
        let masks = mask_probs.i(i)?.index_select(&idx, 0)?;
        let scores: Vec<f32> = kept.iter().map(|c| c.1).collect();
        let labels: Vec<u32> = kept.iter().map(|c| c.2).collect();
        out.push(compute_segments(
            &masks,
            &scores,
            &labels,
            cfg.mask_threshold,
            cfg.overlap_mask_area_threshold,
            &cfg.label_ids_to_fuse,
            target,
        )?);
    }
    Ok(out)
}
