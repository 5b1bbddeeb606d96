//! COCO *instance* data for `segkit train` (`{"type": "CocoInstances", "root": ..}`):
//! segkit-data's [`CocoInstanceDataset`] on the standard layout
//! `annotations/instances_{split}2017.json` with the images in `{split}2017/`.
//!
//! Every annotation becomes one instance of the sample ([`segkit_data::Sample::instances`]):
//! polygons (pycocotools' rasteriser), compressed and uncompressed RLE masks, `iscrowd`
//! kept; the class is the category's position in the json's `categories` list. The
//! semantic map (non-crowd instances painted in order, the rest `255`) rides along for the
//! models that want one. This is the data a PANet trains on ([`crate::panet`]); a user's own
//! instance data in this layout trains the same way (the demo model's canvases are converted
//! to it by `cargo xtask panet-demo`).
//!
//! ```
//! use segkit_train::config::DatasetConfig;
//! let d: DatasetConfig = serde_json::from_str(
//!     r#"{"type": "CocoInstances", "root": "data/coco", "val_split": "minival"}"#,
//! ).unwrap();
//! let DatasetConfig::CocoInstances(c) = d else { panic!() };
//! assert_eq!((c.train_split.as_str(), c.val_split.as_str()), ("train", "minival"));
//! ```

use std::path::{Path, PathBuf};

use segkit_data::layouts::CocoInstanceDataset;
use serde::{Deserialize, Serialize};

use crate::TrainResult;

fn default_train() -> String {
    "train".into()
}
fn default_val() -> String {
    "val".into()
}

/// The `CocoInstances` dataset of a training config (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoInstancesConfig {
    /// Dataset root (holding `annotations/` and `{split}2017/`).
    pub root: PathBuf,
    /// Training split (`instances_{split}2017.json`, `{split}2017/`). Default `train`.
    #[serde(default = "default_train")]
    pub train_split: String,
    /// Validation split. Default `val`.
    #[serde(default = "default_val")]
    pub val_split: String,
}

impl CocoInstancesConfig {
    /// Makes a relative `root` relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.root.is_relative() {
            self.root = base.join(&self.root);
        }
    }

    /// Opens `split`.
    ///
    /// Errors: as [`CocoInstanceDataset::new`] (a missing root, json or image folder, a bad
    /// json, an RLE of the wrong size, ... each naming the file).
    pub fn open(&self, split: &str) -> TrainResult<CocoInstanceDataset> {
        Ok(CocoInstanceDataset::new(&self.root, split)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatasetConfig;
    use crate::data::{open_dataset, Split};
    use segkit_data::Rle;
    use segkit_models::DatasetMeta;

    /// One 16 x 12 image with a polygon, an uncompressed RLE, a compressed RLE (crowd) and
    /// a json naming its categories out of order.
    fn write(root: &Path) {
        let (h, w) = (12usize, 16usize);
        std::fs::create_dir_all(root.join("annotations")).unwrap();
        std::fs::create_dir_all(root.join("train2017")).unwrap();
        image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([9, 8, 7]))
            .save(root.join("train2017/a.png"))
            .unwrap();
        let mut m = vec![0u8; h * w];
        for y in 2..5 {
            for x in 10..14 {
                m[y * w + x] = 1;
            }
        }
        let rle = Rle::from_mask(&m, h, w).unwrap();
        let mut c = vec![0u8; h * w];
        c[(h - 1) * w..].fill(1);
        let crowd = Rle::from_mask(&c, h, w).unwrap().to_compressed();
        let json = serde_json::json!({
            "images": [{"id": 5, "file_name": "a.png", "width": w, "height": h}],
            "categories": [{"id": 9, "name": "b"}, {"id": 3, "name": "a"}],
            "annotations": [
                {"id": 1, "image_id": 5, "category_id": 9, "iscrowd": 0,
                 "segmentation": [[1.0, 1.0, 6.0, 1.0, 6.0, 5.0, 1.0, 5.0]]},
                {"id": 2, "image_id": 5, "category_id": 3, "iscrowd": 0,
                 "segmentation": {"counts": rle.counts(), "size": [h, w]}},
                {"id": 3, "image_id": 5, "category_id": 3, "iscrowd": 1,
                 "segmentation": {"counts": crowd, "size": [h, w]}}
            ]
        });
        std::fs::write(
            root.join("annotations/instances_train2017.json"),
            json.to_string(),
        )
        .unwrap();
    }

    #[test]
    fn coco_instances_open_through_the_training_config() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("data"));
        let mut cfg: DatasetConfig = serde_json::from_str(
            r#"{"type": "CocoInstances", "root": "data", "val_split": "train"}"#,
        )
        .unwrap();
        let DatasetConfig::CocoInstances(c) = &mut cfg else {
            panic!("variant")
        };
        c.resolve_paths(dir.path());
        assert_eq!(c.root, dir.path().join("data"));
        let c = c.clone();
        let ds = open_dataset(&cfg, Split::Val, &DatasetMeta::default()).unwrap();
        assert_eq!(ds.len(), 1);
        // Classes in the json's category order (mmdet's `cat2label`), not by id.
        assert_eq!(ds.info().classes, vec!["b".to_string(), "a".to_string()]);
        let s = ds.get(0).unwrap();
        let inst = s.instances.unwrap();
        assert_eq!(inst.len(), 3);
        // The polygon (category 9 = class 0): pycocotools' rasterisation of [1, 6] x [1, 5].
        assert_eq!(inst[0].class_id, 0);
        let px = |k: usize| inst[k].mask.iter().filter(|&&v| v).count();
        assert_eq!(px(0), 20);
        assert!(inst[0].mask[2 * 16 + 3] && !inst[0].mask[0]);
        // The RLE (category 3 = class 1) and the crowd.
        assert_eq!((inst[1].class_id, px(1), inst[1].iscrowd), (1, 12, false));
        assert_eq!((inst[2].class_id, px(2), inst[2].iscrowd), (1, 16, true));
        let sem = s.semantic.unwrap();
        assert_eq!((sem[2 * 16 + 11], sem[2 * 16 + 3]), (1, 0));
        assert_eq!(sem[11 * 16], ds.info().ignore_index); // crowd only
                                                          // A missing split names what is missing.
        let e = c.open("val").unwrap_err().to_string();
        assert!(e.contains("val2017"), "{e}");
    }
}
