//! OneFormer's own instance inference: the official repository's
//! `OneFormer.instance_inference` (SHI-Labs/OneFormer `oneformer_model.py`), the output its
//! COCO / ADE20K / Cityscapes mask AP is computed from.
//!
//! Unlike transformers' `post_process_instance_segmentation` ([`super::post_process_instance_segmentation`]),
//! which assigns every pixel to one candidate by an arg-max over all candidates (a
//! non-overlapping map, so that a low-scoring candidate with a large mask takes the pixels
//! of a better one), each detection keeps its own binary mask and masks may overlap:
//!
//! - class probabilities `softmax(class_logits)[:, :K]`, the `topk` best `(query, class)`
//!   pairs of the `Q x K` scores (`topk(sorted=False)`, [`super::topk_unsorted`]);
//! - with `thing_ids` (the official code when `panoptic_on`), only thing classes are kept;
//! - each pair's mask is its query's mask logits resized to the target size, `> 0`;
//! - its score is the class probability times the mask score, the mean sigmoid of the logits
//!   inside the mask (`sum(sigmoid * mask) / (sum(mask) + 1e-6)`).
//!
//! The official code upsamples the logits bilinearly to the padded input, crops the image and
//! resizes that to the original size; here the logits are resized to the target size in one
//! step with [`super::resize_bilinear_antialias`] (equal to plain bilinear when growing, as
//! from the stride-4 mask features to the input size).

use candle_core::{DType, IndexOp, Tensor};
use candle_nn::ops::softmax_last_dim;
use serde::{Deserialize, Serialize};

use super::{input_dims, resize_bilinear_antialias, target_size, to_cpu_vec, topk_unsorted};
use crate::Result;

/// Parameters of [`instance_inference`], with the official defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceInferenceConfig {
    /// Detections per image (`TEST.DETECTIONS_PER_IMAGE`, 100 in the official configs; at
    /// most `Q x K` are returned).
    pub topk: usize,
    /// Keep only these classes (the official code keeps thing classes when the model also
    /// evaluates panoptic segmentation); `None` keeps every class.
    pub thing_ids: Option<Vec<u32>>,
}

impl Default for InstanceInferenceConfig {
    fn default() -> Self {
        Self {
            topk: 100,
            thing_ids: None,
        }
    }
}

/// One detection of [`instance_inference`].
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceDetection {
    /// Class id.
    pub label: u32,
    /// Class probability times mask score.
    pub score: f32,
    /// The query whose mask this is.
    pub query: u32,
    /// Binary mask, `height x width` row-major.
    pub mask: Vec<bool>,
}

/// The detections of each image (see the module docs). `class_logits`: `B x Q x (K + 1)`;
/// `mask_logits`: `B x Q x h x w`; `target_sizes`: the output size of each image (default the
/// mask size).
pub fn instance_inference(
    class_logits: &Tensor,
    mask_logits: &Tensor,
    cfg: &InstanceInferenceConfig,
    target_sizes: Option<&[(usize, usize)]>,
) -> Result<Vec<Vec<InstanceDetection>>> {
    let (b, q, k, h, w) = input_dims(class_logits, mask_logits)?;
    let probs =
        softmax_last_dim(&class_logits.to_dtype(DType::F32)?.contiguous()?)?.narrow(2, 0, k)?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let (th, tw) = target_size(target_sizes, b, i)?.unwrap_or((h, w));
        let scores = to_cpu_vec(&probs.i(i)?)?;
        let mut cand: Vec<(f32, u32, u32)> = topk_unsorted(&scores, cfg.topk.min(q * k))
            .into_iter()
            .map(|j| (scores[j], (j % k) as u32, (j / k) as u32))
            .collect();
        if let Some(things) = &cfg.thing_ids {
            cand.retain(|c| things.contains(&c.1));
        }
        if cand.is_empty() {
            out.push(Vec::new());
            continue;
        }
        // Each query's mask once, resized to the target size.
        let mut queries: Vec<u32> = cand.iter().map(|c| c.2).collect();
        queries.sort_unstable();
        queries.dedup();
        let idx = Tensor::new(queries.as_slice(), mask_logits.device())?;
        let m = mask_logits
            .i(i)?
            .to_dtype(DType::F32)?
            .index_select(&idx, 0)?;
        let m = if (th, tw) != (h, w) {
            resize_bilinear_antialias(&m.unsqueeze(0)?, (th, tw))?.squeeze(0)?
        } else {
            m
        };
        let logits = to_cpu_vec(&m)?;
        let hw = th * tw;
        // Per query: the binary mask and its mask score.
        let per_query: Vec<(Vec<bool>, f32)> = (0..queries.len())
            .map(|j| {
                let l = &logits[j * hw..(j + 1) * hw];
                let mask: Vec<bool> = l.iter().map(|&v| v > 0.0).collect();
                let (mut num, mut den) = (0f32, 0f32);
                for (&v, &on) in l.iter().zip(&mask) {
                    if on {
                        num += 1.0 / (1.0 + (-v).exp());
                        den += 1.0;
                    }
                }
                (mask, num / (den + 1e-6))
            })
            .collect();
        let dets = cand
            .iter()
            .map(|&(score, label, query)| {
                let j = queries.binary_search(&query).unwrap_or(0);
                let (mask, mask_score) = &per_query[j];
                InstanceDetection {
                    label,
                    score: score * mask_score,
                    query,
                    mask: mask.clone(),
                }
            })
            .collect();
        out.push(dets);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two queries whose masks overlap: both detections keep their whole masks (the arg-max
    /// map of transformers' post-processing would give the overlap to one), scores are class
    /// probability times the mean sigmoid inside the mask, `thing_ids` filters classes and
    /// `topk` caps the count.
    #[test]
    fn overlapping_masks_and_official_scores() {
        let d = Device::Cpu;
        // Q = 2, K = 2 (+ no object).
        let cls = Tensor::new(&[[[4f32, 0.0, -2.0], [0.0, 3.0, -2.0]]], &d).unwrap();
        let m = Tensor::new(
            &[[
                [[2f32, 2.0], [-1.0, -1.0]], // query 0: top row
                [[1f32, -3.0], [1.0, -3.0]], // query 1: left column
            ]],
            &d,
        )
        .unwrap();
        let all = instance_inference(&cls, &m, &InstanceInferenceConfig::default(), None)
            .unwrap()
            .remove(0);
        assert_eq!(all.len(), 4);
        let p = |row: [f32; 3], c: usize| {
            let e: Vec<f32> = row.iter().map(|v| v.exp()).collect();
            e[c] / e.iter().sum::<f32>()
        };
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let d0 = all.iter().find(|d| (d.query, d.label) == (0, 0)).unwrap();
        assert_eq!(d0.mask, vec![true, true, false, false]);
        let want = p([4.0, 0.0, -2.0], 0) * (2.0 * sig(2.0)) / (2.0 + 1e-6);
        assert!((d0.score - want).abs() < 1e-6, "{} vs {want}", d0.score);
        let d1 = all.iter().find(|d| (d.query, d.label) == (1, 1)).unwrap();
        assert_eq!(d1.mask, vec![true, false, true, false]);
        let want = p([0.0, 3.0, -2.0], 1) * (2.0 * sig(1.0)) / (2.0 + 1e-6);
        assert!((d1.score - want).abs() < 1e-6);
        // Only class 1, at most one detection: the best (query 1, class 1).
        let cfg = InstanceInferenceConfig {
            topk: 2,
            thing_ids: Some(vec![1]),
        };
        let only = instance_inference(&cls, &m, &cfg, Some(&[(4, 4)]))
            .unwrap()
            .remove(0);
        assert_eq!(only.len(), 1);
        assert_eq!((only[0].query, only[0].label), (1, 1));
        assert_eq!(only[0].mask.len(), 16);
    }
}
