//! [`Panet`] as a [`Model`]: instance segmentation ([`InstanceResult`]: class, score, box, COCO
//! RLE mask per detection) and every intermediate by name for `segkit dump`.

use std::any::Any;

use candle_core::{Device, Tensor};
use image::DynamicImage;
use segkit_data::Rle;

use super::{Detections, Panet};
use crate::segment::{unsupported, Instance, InstanceResult, Model, Segmentation, Task};
use crate::{Error, PredictOptions, Result};

/// The names [`Model::forward_named`] gives PANet's outputs, in order.
pub const PANET_OUTPUTS: [&str; 12] = [
    "n2",
    "n3",
    "n4",
    "n5",
    "n6",
    "proposals",
    "proposal_scores",
    "cls_score",
    "bbox_pred",
    "boxes",
    "scores",
    "classes",
];

fn boxes_tensor(boxes: &[[f32; 4]], dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = boxes.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(v, (boxes.len(), 4), dev)?)
}

impl Panet {
    /// The detections of an image of `classes` as an [`InstanceResult`]: instances by
    /// decreasing score (ids 1, 2, ...), each with its class, score, COCO `[x, y, w, h]` box
    /// (Detectron's `xyxy_to_xywh`: `w = x2 - x1 + 1`) and pasted mask as a COCO RLE; the
    /// segment map paints lower scores first, so each pixel shows the highest-scoring
    /// instance covering it.
    pub fn instances(&self, dets: &Detections) -> Result<InstanceResult> {
        let (h, w) = (dets.height, dets.width);
        let classes = self.config().classes();
        let palette = self.palette();
        let mut order: Vec<usize> = (0..dets.len()).collect();
        order.sort_by(|&a, &b| dets.scores[b].total_cmp(&dets.scores[a]));
        let mut instances = Vec::with_capacity(order.len());
        let mut segment_map = vec![0u32; h * w];
        for (rank, &i) in order.iter().enumerate().rev() {
            let id = rank as u32 + 1;
            let mask = dets.masks.get(i).ok_or_else(|| Error::BadImage {
                what: "PANet detections".into(),
                reason: format!("detection {i} has no mask"),
            })?;
            for (m, s) in mask.iter().zip(segment_map.iter_mut()) {
                if *m != 0 {
                    *s = id;
                }
            }
            let rle = Rle::from_mask(mask, h, w).map_err(Error::Core)?;
            let b = dets.boxes[i];
            let class_id = dets.classes[i] as u32;
            instances.push(Instance {
                id,
                class_id,
                class_name: classes
                    .get(class_id as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("class_{class_id}")),
                score: f64::from(dets.scores[i]),
                area: rle.area(),
                bbox: [
                    f64::from(b[0]),
                    f64::from(b[1]),
                    f64::from(b[2] - b[0] + 1.0),
                    f64::from(b[3] - b[1] + 1.0),
                ],
                mask: rle,
            });
        }
        instances.reverse();
        Ok(InstanceResult {
            height: h,
            width: w,
            segment_map,
            instances,
            classes,
            palette,
        })
    }
}

impl Model for Panet {
    fn architecture(&self) -> &'static str {
        "Panet"
    }

    fn name(&self) -> &str {
        &self.config().name
    }

    fn device(&self) -> &Device {
        Panet::device(self)
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Instance]
    }

    fn classes(&self) -> Vec<String> {
        self.config().classes()
    }

    fn palette(&self) -> Vec<[u8; 3]> {
        let cfg = self.config();
        if cfg.meta.palette.len() == cfg.num_classes() {
            cfg.meta.palette.clone()
        } else {
            segkit_data::palette::voc_palette(cfg.num_classes())
        }
    }

    /// On a Detectron blob `1 x 3 x Hp x Wp` (BGR minus the means, padded to 32; taken as
    /// the image itself: scale 1, detections in blob pixels): `n2`..`n6`, `proposals` (`R x
    /// 4`) and `proposal_scores` (`R`), the box head's `cls_score` (`R x C`) and `bbox_pred`
    /// (`R x 4C`), the detections' `boxes` (`D x 4`), `scores` (`D`), `classes` (`D`, as f32),
    /// and with a mask head `mask_logits` (`D x C x 28 x 28`) and `masks` (`D x Hp x Wp`,
    /// 0 / 1).
    fn forward_named(&self, x: &Tensor, _task: Option<Task>) -> Result<Vec<(String, Tensor)>> {
        let (h, w) = match x.dims() {
            [_, _, h, w] => (*h, *w),
            d => {
                return Err(segkit_core::Error::shape("PANet input", &[1, 3, 800, 1216], d).into())
            }
        };
        let o = self.forward_blob(x, [h as f32, w as f32, 1.0], 1.0, (h, w))?;
        let dev = x.device();
        let d = &o.heads.detections;
        let mut v: Vec<Tensor> = o.features.levels.clone();
        v.push(boxes_tensor(&o.proposals.boxes, dev)?);
        v.push(Tensor::new(o.proposals.scores.as_slice(), dev)?);
        v.push(o.heads.box_head.cls_score.clone());
        v.push(o.heads.box_head.bbox_pred.clone());
        v.push(boxes_tensor(&d.boxes, dev)?);
        v.push(Tensor::new(d.scores.as_slice(), dev)?);
        let classes: Vec<f32> = d.classes.iter().map(|&c| c as f32).collect();
        v.push(Tensor::new(classes.as_slice(), dev)?);
        let mut named: Vec<(String, Tensor)> =
            PANET_OUTPUTS.iter().map(|s| s.to_string()).zip(v).collect();
        if let Some(m) = &o.heads.mask_logits {
            named.push(("mask_logits".into(), m.clone()));
            let flat: Vec<u8> = d.masks.iter().flatten().copied().collect();
            let masks = Tensor::from_vec(flat, (d.len(), h, w), dev)?;
            named.push(("masks".into(), masks.to_dtype(candle_core::DType::F32)?));
        }
        Ok(named)
    }

    fn segment(
        &self,
        image: &DynamicImage,
        task: Task,
        _options: &PredictOptions,
    ) -> Result<Segmentation> {
        if task != Task::Instance {
            return Err(unsupported(self, task));
        }
        let rgb = crate::image::to_rgb8(image)?;
        let dets = self.detect(&rgb)?;
        Ok(Segmentation::Instance(self.instances(&dets)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
