//! The results built from the models' outputs: segkit-models' [`Prediction`] (the
//! encoder-decoder's class-map tensor) and the OneFormer post-processing's semantic, instance
//! and panoptic outputs (transformers' shapes) become [`SemanticResult`], [`InstanceResult`]
//! and [`PanopticResult`], with the model's class names and palette.

use std::collections::HashMap;

use segkit_oneformer::postprocess::{self, SegmentationResult};

use super::results::{
    class_name, data_err, invalid, Instance, InstanceResult, PanopticResult, PanopticSegment, Rle,
    SemanticResult,
};
use crate::{Prediction, Result};

impl SemanticResult {
    /// A class map of `height x width` (row-major `class_map`) with the model's class names
    /// and palette.
    ///
    /// Errors: a class map whose length is not `height * width`.
    pub fn new(
        height: usize,
        width: usize,
        class_map: Vec<u32>,
        classes: Vec<String>,
        palette: Vec<[u8; 3]>,
    ) -> Result<Self> {
        if height.checked_mul(width) != Some(class_map.len()) {
            return Err(invalid(format!(
                "class map has {} pixels, expected {height} x {width}",
                class_map.len()
            )));
        }
        Ok(Self {
            height,
            width,
            class_map,
            classes,
            palette,
        })
    }

    /// The encoder-decoder's prediction ([`crate::EncoderDecoder::predict_image`]'s `H x W`
    /// class-id tensor) as a result, read back to the CPU.
    pub fn from_prediction(
        p: &Prediction,
        classes: Vec<String>,
        palette: Vec<[u8; 3]>,
    ) -> Result<Self> {
        Self::new(p.height(), p.width(), p.class_ids()?, classes, palette)
    }

    /// OneFormer's semantic post-processing output (transformers'
    /// `post_process_semantic_segmentation`) as a result: its class map; the per-class scores
    /// it also holds are dropped.
    pub fn from_oneformer(
        r: postprocess::SemanticResult,
        classes: Vec<String>,
        palette: Vec<[u8; 3]>,
    ) -> Result<Self> {
        Self::new(r.height, r.width, r.segmentation, classes, palette)
    }
}

/// One segment of a post-processing result, its duplicates merged.
struct Segment {
    id: u32,
    class_id: u32,
    score: f64,
    mask: Rle,
}

/// The segment map of `r` (0 where no segment is, also for transformers' all `-1` map of an
/// image without candidates) and one segment per id — transformers lists a fused stuff
/// segment once per query: merged, the highest score kept — with its mask.
fn segments(r: &SegmentationResult) -> Result<(Vec<u32>, Vec<Segment>)> {
    let map: Vec<u32> = r
        .segmentation
        .iter()
        .map(|&v| u32::try_from(v).unwrap_or(0))
        .collect();
    let mut uniq: Vec<(u32, u32, f64)> = Vec::new();
    for s in &r.segments {
        let Ok(id) = u32::try_from(s.id) else {
            continue;
        };
        if id == 0 {
            continue;
        }
        match uniq.iter_mut().find(|u| u.0 == id) {
            Some(u) => u.2 = u.2.max(s.score),
            None => uniq.push((id, s.label_id, s.score)),
        }
    }
    let ids: Vec<u32> = uniq.iter().map(|u| u.0).collect();
    let rles = rles_of_segments(&map, r.height, r.width, &ids)?;
    let segs = uniq
        .into_iter()
        .zip(rles)
        .map(|((id, class_id, score), mask)| Segment {
            id,
            class_id,
            score,
            mask,
        })
        .collect();
    Ok((map, segs))
}

impl InstanceResult {
    /// OneFormer's instance post-processing output (transformers'
    /// `post_process_instance_segmentation`) as a result, each instance with its COCO RLE
    /// mask, area and box.
    ///
    /// Errors: a segment map whose length is not `height * width`.
    pub fn from_oneformer(
        r: &SegmentationResult,
        classes: Vec<String>,
        palette: Vec<[u8; 3]>,
    ) -> Result<Self> {
        let (segment_map, segs) = segments(r)?;
        let instances = segs
            .into_iter()
            .map(|s| Instance {
                id: s.id,
                class_id: s.class_id,
                class_name: class_name(&classes, s.class_id).into_owned(),
                score: s.score,
                area: s.mask.area(),
                bbox: s.mask.to_bbox(),
                mask: s.mask,
            })
            .collect();
        Ok(Self {
            height: r.height,
            width: r.width,
            segment_map,
            instances,
            classes,
            palette,
        })
    }
}

impl PanopticResult {
    /// OneFormer's panoptic post-processing output (transformers'
    /// `post_process_panoptic_segmentation`) as a result: one segment per id (fused stuff
    /// segments merged, the highest score kept) with its COCO RLE mask, area and box;
    /// `things` (the thing class ids, when known) sets each segment's `isthing`.
    ///
    /// Errors: a segment map whose length is not `height * width`.
    pub fn from_oneformer(
        r: &SegmentationResult,
        classes: Vec<String>,
        palette: Vec<[u8; 3]>,
        things: Option<&[u32]>,
    ) -> Result<Self> {
        let (segment_map, segs) = segments(r)?;
        let segments = segs
            .into_iter()
            .map(|s| PanopticSegment {
                id: s.id,
                class_id: s.class_id,
                class_name: class_name(&classes, s.class_id).into_owned(),
                isthing: things.map(|t| t.contains(&s.class_id)),
                score: s.score,
                area: s.mask.area(),
                bbox: s.mask.to_bbox(),
                mask: s.mask,
            })
            .collect();
        Ok(Self {
            height: r.height,
            width: r.width,
            segment_map,
            segments,
            classes,
            palette,
        })
    }
}

/// COCO RLEs of the segments `ids` of a row-major `height x width` id map, in one
/// column-major pass (the masks equal `Rle::from_mask(map == id)`).
pub(crate) fn rles_of_segments(
    map: &[u32],
    height: usize,
    width: usize,
    ids: &[u32],
) -> Result<Vec<Rle>> {
    let n = height * width;
    if map.len() != n {
        return Err(invalid(format!(
            "segment map has {} pixels, expected {height} x {width}",
            map.len()
        )));
    }
    let index: HashMap<u32, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    // Per segment: the counts so far and the column-major position after its last pixel.
    let mut state: Vec<(Vec<u32>, usize)> = vec![(Vec::new(), 0); ids.len()];
    for x in 0..width {
        for y in 0..height {
            let Some(&k) = index.get(&map[y * width + x]) else {
                continue;
            };
            let p = x * height + y;
            let (counts, end) = &mut state[k];
            match counts.last_mut() {
                Some(last) if *end == p => *last += 1,
                _ => {
                    counts.push((p - *end) as u32);
                    counts.push(1);
                }
            }
            *end = p + 1;
        }
    }
    state
        .into_iter()
        .map(|(mut counts, end)| {
            if counts.is_empty() || end < n {
                counts.push((n - end) as u32);
            }
            Rle::new(height, width, counts).map_err(data_err)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use segkit_oneformer::postprocess::Segment as HfSegment;

    use super::*;

    #[test]
    fn rles_equal_per_mask_encoding() {
        let (h, w) = (5, 7);
        let map: Vec<u32> = (0..h * w).map(|i| ((i * 7 + i / 3) % 4) as u32).collect();
        let ids = [0u32, 1, 2, 3, 9];
        let rles = rles_of_segments(&map, h, w, &ids).unwrap();
        for (id, rle) in ids.iter().zip(&rles) {
            let mask: Vec<u8> = map.iter().map(|&v| u8::from(v == *id)).collect();
            assert_eq!(*rle, Rle::from_mask(&mask, h, w).unwrap(), "id {id}");
        }
        assert_eq!(rles[4].area(), 0);
        // A mask that ends on a foreground pixel and one that starts on one.
        let map = vec![1u32, 0, 0, 1];
        let r = rles_of_segments(&map, 2, 2, &[1]).unwrap();
        assert_eq!(r[0], Rle::from_mask(&[1u8, 0, 0, 1], 2, 2).unwrap());
        assert!(rles_of_segments(&map, 3, 2, &[1]).is_err());
    }

    fn names() -> Vec<String> {
        ["wall", "person"].map(String::from).to_vec()
    }

    #[test]
    fn semantic_results_from_both_models_outputs() {
        let pal = segkit_data::palette::voc_palette(2);
        let t = Tensor::new(&[[0u32, 1, 1], [1, 0, 0]], &Device::Cpu).unwrap();
        let a = SemanticResult::from_prediction(&Prediction { class_map: t }, names(), pal.clone())
            .unwrap();
        assert_eq!((a.height, a.width), (2, 3));
        assert_eq!(a.class_map, [0, 1, 1, 1, 0, 0]);
        let hf = postprocess::SemanticResult {
            height: 2,
            width: 3,
            segmentation: vec![0, 1, 1, 1, 0, 0],
            scores: Tensor::zeros((2, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
        };
        let b = SemanticResult::from_oneformer(hf, names(), pal.clone()).unwrap();
        assert_eq!(a, b);
        let e = SemanticResult::new(2, 2, vec![0; 3], names(), pal).unwrap_err();
        assert!(e.to_string().contains("3 pixels"), "{e}");
    }

    #[test]
    fn fused_segments_merge_and_empty_maps_have_none() {
        let seg = |id, label_id, score| HfSegment {
            id,
            label_id,
            was_fused: false,
            score,
        };
        // Segment 2 listed twice (a fused stuff class), segment 3 absent from the map.
        let r = SegmentationResult {
            height: 2,
            width: 2,
            segmentation: vec![1, 2, 2, 0],
            segments: vec![
                seg(1, 1, 0.9),
                seg(2, 0, 0.6),
                seg(2, 0, 0.8),
                seg(3, 5, 0.7),
            ],
            rle: None,
        };
        let pal = segkit_data::palette::voc_palette(2);
        let p = PanopticResult::from_oneformer(&r, names(), pal.clone(), Some(&[1])).unwrap();
        assert_eq!(p.segment_map, [1, 2, 2, 0]);
        let got: Vec<_> = p
            .segments
            .iter()
            .map(|s| (s.id, s.class_name.as_str(), s.isthing, s.score, s.area))
            .collect();
        assert_eq!(
            got,
            [
                (1, "person", Some(true), 0.9, 1),
                (2, "wall", Some(false), 0.8, 2),
                (3, "class_5", Some(false), 0.7, 0)
            ]
        );
        assert_eq!(p.segments[1].bbox, [0.0, 0.0, 2.0, 2.0]);
        let i = InstanceResult::from_oneformer(&r, names(), pal.clone()).unwrap();
        assert_eq!(i.instances.len(), 3);
        assert_eq!(
            i.instances[0].mask,
            Rle::from_mask(&[1u8, 0, 0, 0], 2, 2).unwrap()
        );
        // transformers' map of an image without candidates: all -1, no segments.
        let none = SegmentationResult {
            height: 1,
            width: 2,
            segmentation: vec![-1, -1],
            segments: vec![],
            rle: None,
        };
        let p = PanopticResult::from_oneformer(&none, names(), pal, None).unwrap();
        assert_eq!(p.segment_map, [0, 0]);
        assert!(p.segments.is_empty());
        assert_eq!(p.to_semantic().unlabeled_area(), 2);
    }
}
