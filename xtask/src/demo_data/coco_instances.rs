//! The demo canvases as COCO *instance* data (`cargo xtask panet-demo` trains PANet on them
//! through `segkit train`'s `CocoInstances` dataset, the path a user's own data takes).
//!
//! [`write_coco_instances`] reads `images/`, `annotations/` (8-bit class ids) and
//! `instances/` (16-bit instance ids) of one split of the demo data and writes
//! `{split}2017/NNNNN.png` (hard links to the canvases, copies where linking fails) and
//! `annotations/instances_{split}2017.json`: every Fashion-MNIST item still visible on a
//! canvas is one annotation — category `1 + label` (the semantic class id, names from
//! [`FASHION_CLASSES`]), its visible pixels as a compressed COCO RLE, its tight box
//! `[x, y, w, h]` (pycocotools' `toBbox` of the mask), `area` = its pixel count,
//! `iscrowd` 0. Items hidden completely by later ones are left out.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use segkit::data::Rle;
use segkit::models::encoder_decoder::demo::FASHION_CLASSES;
use segkit::train::{TrainError, TrainResult};

/// What [`write_coco_instances`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoSplitSummary {
    /// Images.
    pub images: usize,
    /// Annotations (visible items).
    pub annotations: usize,
    /// The json.
    pub json: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One visible item of a canvas.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    category: u64,
    bbox: [f64; 4],
    area: u64,
    counts: String,
}

/// The visible items of one canvas from its class map and instance map (`h x w`).
fn items(sem: &[u8], inst: &[u16], h: usize, w: usize, what: &Path) -> TrainResult<Vec<Item>> {
    let n = inst.iter().copied().max().unwrap_or(0) as usize;
    let mut out = Vec::new();
    for k in 1..=n {
        let mask: Vec<u8> = inst.iter().map(|&v| u8::from(v as usize == k)).collect();
        let Some(p) = mask.iter().position(|&v| v != 0) else {
            continue; // hidden by later items
        };
        let category = sem[p];
        let consistent = mask.iter().zip(sem).all(|(&m, &s)| m == 0 || s == category);
        if category == 0 || usize::from(category) >= FASHION_CLASSES.len() || !consistent {
            return Err(io_err(
                what,
                format!("instance {k}: class map value {category} is not one item class"),
            ));
        }
        let rle = Rle::from_mask(&mask, h, w).map_err(|e| io_err(what, e))?;
        out.push(Item {
            category: u64::from(category),
            bbox: rle.to_bbox(),
            area: rle.area(),
            counts: rle.to_compressed(),
        });
    }
    Ok(out)
}

/// Writes split `split` of the demo data in `data` as COCO instance data under `out` (see
/// the module docs).
pub fn write_coco_instances(data: &Path, out: &Path, split: &str) -> TrainResult<CocoSplitSummary> {
    let img_dir = data.join("images").join(split);
    let mut names: Vec<String> = std::fs::read_dir(&img_dir)
        .map_err(|e| io_err(&img_dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    let dst = out.join(format!("{split}2017"));
    let ann_dir = out.join("annotations");
    for d in [&dst, &ann_dir] {
        std::fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
    }
    let per_image: Vec<(usize, usize, Vec<Item>)> = names
        .par_iter()
        .map(|name| {
            let src = img_dir.join(name);
            let sem_path = data.join("annotations").join(split).join(name);
            let inst_path = data.join("instances").join(split).join(name);
            let sem = image::open(&sem_path)
                .map_err(|e| io_err(&sem_path, e))?
                .into_luma8();
            let inst = image::open(&inst_path)
                .map_err(|e| io_err(&inst_path, e))?
                .into_luma16();
            let (w, h) = (sem.width() as usize, sem.height() as usize);
            if (inst.width() as usize, inst.height() as usize) != (w, h) {
                return Err(io_err(
                    &inst_path,
                    "instance map size differs from class map",
                ));
            }
            let target = dst.join(name);
            if !target.exists() && std::fs::hard_link(&src, &target).is_err() {
                std::fs::copy(&src, &target).map_err(|e| io_err(&target, e))?;
            }
            Ok((h, w, items(sem.as_raw(), inst.as_raw(), h, w, &inst_path)?))
        })
        .collect::<TrainResult<_>>()?;
    let mut images = Vec::with_capacity(names.len());
    let mut anns = Vec::new();
    for (i, (name, (h, w, its))) in names.iter().zip(per_image).enumerate() {
        images.push(serde_json::json!({"id": i, "file_name": name, "width": w, "height": h}));
        for it in its {
            anns.push(serde_json::json!({
                "id": anns.len() + 1, "image_id": i, "category_id": it.category,
                "segmentation": {"size": [h, w], "counts": it.counts},
                "area": it.area, "bbox": it.bbox, "iscrowd": 0
            }));
        }
    }
    let categories: Vec<serde_json::Value> = FASHION_CLASSES[1..]
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"id": i + 1, "name": n, "supercategory": "fashion"}))
        .collect();
    let json = ann_dir.join(format!("instances_{split}2017.json"));
    let n_anns = anns.len();
    let doc = serde_json::json!({"images": images, "annotations": anns, "categories": categories});
    std::fs::write(&json, doc.to_string()).map_err(|e| io_err(&json, e))?;
    Ok(CocoSplitSummary {
        images: names.len(),
        annotations: n_anns,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use segkit::data::{layouts::CocoInstanceDataset, SegDataset};

    /// Two canvases written as demo data: items (one hidden), the converted json read back by
    /// segkit-data's reader gives the same masks and classes.
    #[test]
    fn demo_canvases_convert_to_coco_instances() {
        let dir = tempfile::tempdir().unwrap();
        let (data, out) = (dir.path().join("demo"), dir.path().join("coco"));
        let (h, w) = super::super::test_canvases::HW;
        super::super::test_canvases::write_two_canvases(&data);
        let expect: Vec<Vec<(u32, usize)>> =
            (0..2u32).map(|c| vec![(2 + c, 12), (8, 32)]).collect();
        let s = write_coco_instances(&data, &out, "val").unwrap();
        assert_eq!((s.images, s.annotations), (2, 4));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&s.json).unwrap()).unwrap();
        assert_eq!(
            doc["annotations"][0]["bbox"],
            serde_json::json!([2.0, 1.0, 4.0, 3.0])
        );
        assert_eq!(doc["categories"][8]["name"], "Bag");
        let ds = CocoInstanceDataset::new(&out, "val").unwrap();
        for (i, e) in expect.iter().enumerate() {
            let got: Vec<(u32, usize)> = ds
                .get(i)
                .unwrap()
                .instances
                .unwrap()
                .iter()
                .map(|a| (a.class_id, a.mask.iter().filter(|&&v| v).count()))
                .collect();
            assert_eq!(&got, e);
        }
        // A class map that disagrees with the instance map is an error naming the file.
        image::GrayImage::new(w as u32, h as u32)
            .save(data.join("annotations/val/00001.png"))
            .unwrap();
        let e = write_coco_instances(&data, &out, "val")
            .unwrap_err()
            .to_string();
        assert!(e.contains("00001.png"), "{e}");
    }
}
