//! OneFormer's evaluation on the three tasks' post-processed outputs at each image's own
//! size: mIoU from the semantic task and PQ from the panoptic task (transformers'
//! post-processing), mask AP from the instance task through the official repository's
//! `instance_inference` (overlapping per-query masks, score = class probability x mask score,
//! the 100 best, thing classes only: segkit-oneformer's [`instance_inference`]), with
//! segkit-data's metrics. transformers' instance post-processing is not used for AP: its
//! arg-max map gives a pixel to one candidate only, so a low-scoring candidate with a large
//! mask takes the pixels of a correct detection.

use std::collections::{BTreeMap, BTreeSet};

use image::{DynamicImage, RgbImage};
use segkit_data::metrics::coco::{CocoEvaluator, Detection, GroundTruth};
use segkit_data::metrics::{PanopticCategory, PanopticQuality, SegMetric, SegmentInfo};
use segkit_data::{Rle, Sample, SegDataset};
use segkit_models::oneformer::OneFormerPrediction;
use segkit_models::{OneFormer, PredictOptions};
use segkit_oneformer::postprocess::{
    instance_inference, InstanceInferenceConfig, SegmentationResult,
};
use segkit_oneformer::targets::ClassMetadata;
use segkit_oneformer::tokenizer::Task;

use crate::eval::EvalResult;
use crate::TrainResult;

fn bad(s: &Sample, reason: &str) -> crate::TrainError {
    segkit_data::Error::BadFile {
        path: s.path.clone(),
        reason: reason.into(),
    }
    .into()
}

/// The segments of a post-processed result, one per id (fused stuff segments repeat an id).
fn segments(r: &SegmentationResult) -> Vec<(u32, u32, f64)> {
    let mut seen = BTreeSet::new();
    r.segments
        .iter()
        .filter(|s| s.id > 0 && seen.insert(s.id))
        .map(|s| (s.id as u32, s.label_id, s.score))
        .collect()
}

fn ids(r: &SegmentationResult) -> Vec<u32> {
    r.segmentation.iter().map(|&v| v.max(0) as u32).collect()
}

/// The panoptic prediction of one image against its segments (ids 1.. in list order).
fn add_panoptic(
    model: &OneFormer,
    img: &DynamicImage,
    inst: &[segkit_data::InstanceAnnotation],
    (h, w): (usize, usize),
    opts: &PredictOptions,
    pq: &mut PanopticQuality,
) -> TrainResult<()> {
    let mut gt_ids = vec![0u32; h * w];
    let mut gt_segs = Vec::new();
    for (j, a) in inst.iter().enumerate() {
        let id = j as u32 + 1;
        for (p, &m) in gt_ids.iter_mut().zip(&a.mask) {
            if m {
                *p = id;
            }
        }
        gt_segs.push(SegmentInfo {
            id,
            category_id: a.class_id,
            iscrowd: a.iscrowd,
        });
    }
    if let OneFormerPrediction::Panoptic(r) = model.predict_image(img, Task::Panoptic, opts)? {
        let segs: Vec<SegmentInfo> = segments(&r)
            .into_iter()
            .map(|(id, c, _)| SegmentInfo {
                id,
                category_id: c,
                iscrowd: false,
            })
            .collect();
        pq.update(&gt_ids, &gt_segs, &ids(&r), &segs)?;
    }
    Ok(())
}

/// The instance detections of one image ([`instance_inference`] on the instance task's
/// output) and its thing segments as ground truth.
fn add_instances(
    model: &OneFormer,
    img: &DynamicImage,
    inst: &[segkit_data::InstanceAnnotation],
    (image_id, h, w): (u64, usize, usize),
    cfg: &InstanceInferenceConfig,
    classes: &ClassMetadata,
    ap: &mut CocoEvaluator,
) -> TrainResult<()> {
    ap.add_image(image_id, h, w)?;
    for a in inst
        .iter()
        .filter(|a| classes.is_thing(a.class_id as usize))
    {
        ap.add_ground_truth(GroundTruth {
            image_id,
            category_id: u64::from(a.class_id),
            mask: Rle::from_mask(&a.mask, h, w)?,
            iscrowd: a.iscrowd,
            area: None,
        })?;
    }
    let x = model.preprocess(&img.to_rgb8())?;
    let out = model.forward(&x, &model.task_inputs(Task::Instance)?, None, false)?;
    let dets = instance_inference(
        &out.class_queries_logits,
        &out.masks_queries_logits,
        cfg,
        Some(&[(h, w)]),
    )
    .map_err(segkit_models::Error::from)?;
    for d in dets.into_iter().flatten() {
        let mask: Vec<u8> = d.mask.iter().map(|&b| u8::from(b)).collect();
        ap.add_detection(Detection {
            image_id,
            category_id: u64::from(d.label),
            mask: Rle::from_mask(&mask, h, w)?,
            score: f64::from(d.score),
        })?;
    }
    Ok(())
}

/// Evaluates `model` on every image of `dataset` (see the module docs).
pub(super) fn evaluate(
    model: &OneFormer,
    classes: &ClassMetadata,
    dataset: &dyn SegDataset,
) -> TrainResult<EvalResult> {
    let k = classes.len();
    let info = dataset.info();
    let mut sem = SegMetric::new(k, i64::from(info.ignore_index))?;
    let cats: Vec<PanopticCategory> = (0..k)
        .map(|c| PanopticCategory {
            id: c as u32,
            isthing: classes.is_thing(c),
        })
        .collect();
    let mut pq = PanopticQuality::new(&cats)?;
    let things: Vec<u64> = (0..k as u64)
        .filter(|&c| classes.is_thing(c as usize))
        .collect();
    let mut ap = CocoEvaluator::new(&things);
    let mut opts = PredictOptions::default();
    opts.panoptic.label_ids_to_fuse = (0..k as u32)
        .filter(|&c| !classes.is_thing(c as usize))
        .collect();
    opts.instance.thing_ids = Some(things.iter().map(|&c| c as u32).collect());
    let inst_cfg = InstanceInferenceConfig {
        topk: 100,
        thing_ids: opts.instance.thing_ids.clone(),
    };
    let (mut has_pan, n) = (false, dataset.len());
    for i in 0..n {
        let s = dataset.get(i)?;
        let (h, w) = (s.height, s.width);
        let rgb = RgbImage::from_raw(w as u32, h as u32, s.image.clone())
            .ok_or_else(|| bad(&s, "image buffer does not match its size"))?;
        let img = DynamicImage::ImageRgb8(rgb);
        if let Some(gt) = &s.semantic {
            if let OneFormerPrediction::Semantic(r) =
                model.predict_image(&img, Task::Semantic, &opts)?
            {
                sem.update(&r.segmentation, gt)?;
            }
        }
        let Some(inst) = &s.instances else { continue };
        has_pan = true;
        add_panoptic(model, &img, inst, (h, w), &opts, &mut pq)?;
        add_instances(
            model,
            &img,
            inst,
            (i as u64, h, w),
            &inst_cfg,
            classes,
            &mut ap,
        )?;
    }
    let r = sem.compute();
    let opt = |v: f64| (!v.is_nan()).then_some(v);
    let mut extra = BTreeMap::new();
    if has_pan {
        let p = pq.compute();
        extra.insert("PQ".to_string(), p.all.pq);
        extra.insert("SQ".to_string(), p.all.sq);
        extra.insert("RQ".to_string(), p.all.rq);
        if !things.is_empty() {
            let a = ap.evaluate()?;
            extra.insert("AP".to_string(), a.ap());
            extra.insert("AP50".to_string(), a.ap50());
        }
    }
    Ok(EvalResult {
        num_images: n,
        aacc: r.aacc,
        miou: r.miou,
        macc: r.macc,
        classes: classes.names().to_vec(),
        iou: r.iou.iter().copied().map(opt).collect(),
        acc: r.acc.iter().copied().map(opt).collect(),
        extra,
    })
}
