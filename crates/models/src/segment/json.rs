//! `serde::Serialize` for the results whose JSON is not their fields: the class and segment
//! maps are skipped and the per-class areas computed from them are serialised instead (the
//! shape is documented in [`super::results`]).

use serde::{Serialize, Serializer};

use super::results::{
    ClassArea, Instance, InstanceResult, PanopticResult, PanopticSegment, Rle, SemanticResult,
};

/// A mask as pycocotools' compressed RLE: `{"size": [h, w], "counts": "..."}`.
#[derive(Serialize)]
struct CocoRle {
    size: [usize; 2],
    counts: String,
}

/// `serialize_with` for [`Rle`] fields: the COCO compressed form.
pub(super) fn coco_rle<S: Serializer>(mask: &Rle, s: S) -> Result<S::Ok, S::Error> {
    CocoRle {
        size: [mask.height(), mask.width()],
        counts: mask.to_compressed(),
    }
    .serialize(s)
}

/// The JSON of every result: its size, the classes present with their areas, the unlabeled
/// area, and the instances or segments.
#[derive(Serialize)]
struct ResultJson<'a> {
    height: usize,
    width: usize,
    classes: Vec<ClassArea>,
    unlabeled_area: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<&'a [Instance]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segments: Option<&'a [PanopticSegment]>,
}

impl ResultJson<'_> {
    fn of(sem: &SemanticResult) -> Self {
        Self {
            height: sem.height,
            width: sem.width,
            classes: sem.class_areas(),
            unlabeled_area: sem.unlabeled_area(),
            instances: None,
            segments: None,
        }
    }
}

impl Serialize for SemanticResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResultJson::of(self).serialize(s)
    }
}

impl Serialize for InstanceResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResultJson {
            instances: Some(&self.instances),
            ..ResultJson::of(&self.to_semantic())
        }
        .serialize(s)
    }
}

impl Serialize for PanopticResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResultJson {
            segments: Some(&self.segments),
            ..ResultJson::of(&self.to_semantic())
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::results::{Segmentation, UNLABELED};
    use super::*;

    fn classes() -> Vec<String> {
        ["sky", "tree", "road"].map(String::from).to_vec()
    }

    /// A 2 x 3 panoptic result: segment 1 (`tree`, a thing) on the first column and the
    /// last pixel, segment 2 (`sky`) on the second column, the third column's top pixel
    /// covered by none.
    fn panoptic() -> PanopticResult {
        let map = vec![1, 2, 0, 1, 2, 1];
        let mask1 = Rle::from_mask(&[1u8, 0, 0, 1, 0, 1], 2, 3).unwrap();
        let mask2 = Rle::from_mask(&[0u8, 1, 0, 0, 1, 0], 2, 3).unwrap();
        PanopticResult {
            height: 2,
            width: 3,
            segment_map: map,
            segments: vec![
                PanopticSegment {
                    id: 1,
                    class_id: 1,
                    class_name: "tree".into(),
                    isthing: Some(true),
                    score: 0.75,
                    area: 3,
                    bbox: mask1.to_bbox(),
                    mask: mask1,
                },
                PanopticSegment {
                    id: 2,
                    class_id: 0,
                    class_name: "sky".into(),
                    isthing: None,
                    score: 0.5,
                    area: 2,
                    bbox: mask2.to_bbox(),
                    mask: mask2,
                },
            ],
            classes: classes(),
            palette: segkit_data::palette::voc_palette(3),
        }
    }

    #[test]
    fn semantic_json_is_sizes_and_class_areas() {
        let sem = SemanticResult {
            height: 2,
            width: 2,
            class_map: vec![2, 2, 0, 2],
            classes: classes(),
            palette: segkit_data::palette::voc_palette(3),
        };
        let got = serde_json::to_value(Segmentation::Semantic(sem)).unwrap();
        let want = json!({
            "task": "semantic",
            "height": 2,
            "width": 2,
            "classes": [
                {"id": 0, "name": "sky", "area": 1, "fraction": 0.25},
                {"id": 2, "name": "road", "area": 3, "fraction": 0.75},
            ],
            "unlabeled_area": 0,
        });
        assert_eq!(got, want);
    }

    #[test]
    fn panoptic_json_lists_segments_with_coco_rles() {
        let p = panoptic();
        let got = serde_json::to_value(Segmentation::Panoptic(p.clone())).unwrap();
        // Column-major counts: segment 1 is pixels 0, 1 (first column) and 5 (last pixel).
        let (c1, c2) = (
            p.segments[0].mask.to_compressed(),
            p.segments[1].mask.to_compressed(),
        );
        assert_eq!(p.segments[0].mask.counts(), [0, 2, 3, 1]);
        let want = json!({
            "task": "panoptic",
            "height": 2,
            "width": 3,
            "classes": [
                {"id": 0, "name": "sky", "area": 2, "fraction": 2.0 / 6.0},
                {"id": 1, "name": "tree", "area": 3, "fraction": 0.5},
            ],
            "unlabeled_area": 1,
            "segments": [
                {"id": 1, "class_id": 1, "class_name": "tree", "isthing": true, "score": 0.75,
                 "area": 3, "bbox": [0.0, 0.0, 3.0, 2.0],
                 "segmentation": {"size": [2, 3], "counts": c1}},
                {"id": 2, "class_id": 0, "class_name": "sky", "isthing": null, "score": 0.5,
                 "area": 2, "bbox": [1.0, 0.0, 1.0, 2.0],
                 "segmentation": {"size": [2, 3], "counts": c2}},
            ],
        });
        assert_eq!(got, want);
        // The counts decode back to the masks.
        let back = Rle::from_compressed(&c1, 2, 3).unwrap();
        assert_eq!(back, p.segments[0].mask);
        assert_eq!(p.to_semantic().class_map, [1, 0, UNLABELED, 1, 0, 1]);
    }

    #[test]
    fn instance_json_lists_instances() {
        let p = panoptic();
        let inst = InstanceResult {
            height: p.height,
            width: p.width,
            segment_map: p.segment_map.iter().map(|&s| u32::from(s == 1)).collect(),
            instances: vec![Instance {
                id: 1,
                class_id: 1,
                class_name: "tree".into(),
                score: 0.75,
                area: 3,
                bbox: p.segments[0].bbox,
                mask: p.segments[0].mask.clone(),
            }],
            classes: classes(),
            palette: p.palette.clone(),
        };
        // The field order is the documented one.
        let text = serde_json::to_string(&inst.instances[0]).unwrap();
        let counts = p.segments[0].mask.to_compressed();
        assert_eq!(
            text,
            format!(
                concat!(
                    r#"{{"id":1,"class_id":1,"class_name":"tree","score":0.75,"area":3,"#,
                    r#""bbox":[0.0,0.0,3.0,2.0],"segmentation":{{"size":[2,3],"counts":"{}"}}}}"#
                ),
                counts
            )
        );
        let got = serde_json::to_value(Segmentation::Instance(inst)).unwrap();
        let want = json!({
            "task": "instance",
            "height": 2,
            "width": 3,
            "classes": [{"id": 1, "name": "tree", "area": 3, "fraction": 0.5}],
            "unlabeled_area": 3,
            "instances": [
                {"id": 1, "class_id": 1, "class_name": "tree", "score": 0.75, "area": 3,
                 "bbox": [0.0, 0.0, 3.0, 2.0],
                 "segmentation": {"size": [2, 3], "counts": p.segments[0].mask.to_compressed()}},
            ],
        });
        assert_eq!(got, want);
    }
}
