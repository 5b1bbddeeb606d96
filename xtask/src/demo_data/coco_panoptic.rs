//! The demo canvases as COCO *panoptic* data (`cargo xtask oneformer-demo` fine-tunes
//! OneFormer on them through `segkit train`'s `CocoPanoptic` dataset, the path a user's own
//! panoptic data takes).
//!
//! [`write_coco_panoptic`] reads `images/`, `annotations/` (8-bit class ids) and
//! `instances/` (16-bit instance ids) of one split of the demo data and writes
//! `{split}2017/NNNNN.png` (hard links to the canvases, copies where linking fails),
//! `annotations/panoptic_{split}2017/NNNNN.png` (segment ids in RGB, `R + 256 G + 256^2 B`)
//! and `annotations/panoptic_{split}2017.json`. Categories: `background` (id 1, stuff) and
//! the ten Fashion-MNIST classes (ids 2..=11, things), so that segkit's class ids (the
//! categories in the JSON's order) are the demo's semantic class ids. Every item still
//! visible on a canvas is one thing segment (segment id = its instance id), the background
//! one stuff segment (id = the largest instance id + 1); `segments_info` carries `id`,
//! `category_id`, `iscrowd` 0, `area` and the tight `bbox` `[x, y, w, h]`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use segkit::models::encoder_decoder::demo::FASHION_CLASSES;
use segkit::train::{TrainError, TrainResult};

/// What [`write_coco_panoptic`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PanopticSplitSummary {
    /// Images.
    pub images: usize,
    /// Thing segments (visible items).
    pub things: usize,
    /// The json.
    pub json: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One segment of a canvas.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    id: u32,
    category: u64,
    area: u64,
    bbox: [u64; 4],
}

/// A segment's class, area and box (min x, min y, max x, max y).
type Extent = (u8, u64, usize, usize, usize, usize);

/// The segments of one canvas and its segment-id map, from the class map and the instance
/// map (`h x w`).
fn segments(
    sem: &[u8],
    inst: &[u16],
    w: usize,
    what: &Path,
) -> TrainResult<(Vec<Segment>, Vec<u32>)> {
    let n = inst.iter().copied().max().unwrap_or(0) as u32;
    let bg = n + 1;
    let mut ids = vec![0u32; inst.len()];
    let mut acc: Vec<Option<Extent>> = vec![None; bg as usize + 1];
    for (p, (&s, &k)) in sem.iter().zip(inst).enumerate() {
        let id = if k == 0 { bg } else { u32::from(k) };
        let cls = if k == 0 { 0 } else { s };
        if (k == 0) != (s == 0) || usize::from(s) >= FASHION_CLASSES.len() {
            return Err(io_err(
                what,
                format!("pixel {p}: instance {k} with class map value {s}"),
            ));
        }
        ids[p] = id;
        let (x, y) = (p % w, p / w);
        let e = acc[id as usize].get_or_insert((cls, 0, x, y, x, y));
        if e.0 != cls {
            return Err(io_err(what, format!("instance {k} has several classes")));
        }
        e.1 += 1;
        (e.2, e.3, e.4, e.5) = (e.2.min(x), e.3.min(y), e.4.max(x), e.5.max(y));
    }
    let segs = acc
        .iter()
        .enumerate()
        .filter_map(|(id, e)| {
            let (cls, area, x0, y0, x1, y1) = (*e)?;
            Some(Segment {
                id: id as u32,
                category: u64::from(cls) + 1,
                area,
                bbox: [
                    x0 as u64,
                    y0 as u64,
                    (x1 - x0 + 1) as u64,
                    (y1 - y0 + 1) as u64,
                ],
            })
        })
        .collect();
    Ok((segs, ids))
}

/// Writes split `split` of the demo data in `data` as COCO panoptic data under `out` (see
/// the module docs).
pub fn write_coco_panoptic(
    data: &Path,
    out: &Path,
    split: &str,
) -> TrainResult<PanopticSplitSummary> {
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
    let png_dir = ann_dir.join(format!("panoptic_{split}2017"));
    for d in [&dst, &png_dir] {
        std::fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
    }
    let per_image: Vec<(usize, usize, Vec<Segment>)> = names
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
            let (segs, ids) = segments(sem.as_raw(), inst.as_raw(), w, &inst_path)?;
            let rgb: Vec<u8> = ids
                .iter()
                .flat_map(|&id| [id as u8, (id >> 8) as u8, (id >> 16) as u8])
                .collect();
            let png = png_dir.join(name);
            let img = image::RgbImage::from_raw(w as u32, h as u32, rgb)
                .ok_or_else(|| io_err(&png, "segment map size"))?;
            super::save(&img, &png)?;
            let target = dst.join(name);
            if !target.exists() && std::fs::hard_link(&src, &target).is_err() {
                std::fs::copy(&src, &target).map_err(|e| io_err(&target, e))?;
            }
            Ok((h, w, segs))
        })
        .collect::<TrainResult<_>>()?;
    let mut images = Vec::with_capacity(names.len());
    let mut anns = Vec::with_capacity(names.len());
    let mut things = 0;
    for (i, (name, (h, w, segs))) in names.iter().zip(per_image).enumerate() {
        images.push(serde_json::json!({"id": i, "file_name": name, "width": w, "height": h}));
        things += segs.iter().filter(|s| s.category > 1).count();
        let info: Vec<serde_json::Value> = segs
            .iter()
            .map(|s| {
                serde_json::json!({"id": s.id, "category_id": s.category, "iscrowd": 0,
                                   "area": s.area, "bbox": s.bbox})
            })
            .collect();
        anns.push(serde_json::json!({"image_id": i, "file_name": name, "segments_info": info}));
    }
    let categories: Vec<serde_json::Value> = FASHION_CLASSES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({"id": i + 1, "name": n, "isthing": u8::from(i > 0),
                               "supercategory": if i > 0 { "fashion" } else { "background" }})
        })
        .collect();
    let json = ann_dir.join(format!("panoptic_{split}2017.json"));
    let doc = serde_json::json!({"images": images, "annotations": anns, "categories": categories});
    std::fs::write(&json, doc.to_string()).map_err(|e| io_err(&json, e))?;
    Ok(PanopticSplitSummary {
        images: names.len(),
        things,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use segkit::data::{layouts::CocoPanopticDataset, SegDataset};

    /// Two canvases written as demo data (one item hidden by a later one), converted and read
    /// back by segkit-data's panoptic reader: the same segments, classes and semantic map.
    #[test]
    fn demo_canvases_convert_to_coco_panoptic() {
        let dir = tempfile::tempdir().unwrap();
        let (data, out) = (dir.path().join("demo"), dir.path().join("coco"));
        let (h, w) = super::super::test_canvases::HW;
        let sems = super::super::test_canvases::write_two_canvases(&data);
        let s = write_coco_panoptic(&data, &out, "val").unwrap();
        assert_eq!((s.images, s.things), (2, 4));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&s.json).unwrap()).unwrap();
        let seg0 = &doc["annotations"][0]["segments_info"];
        assert_eq!(seg0[0]["bbox"], serde_json::json!([2, 1, 4, 3]));
        assert_eq!(seg0[2]["id"], 4, "background = largest instance id + 1");
        assert_eq!(seg0[2]["area"], (h * w - 12 - 32) as u64);
        assert_eq!(doc["categories"][0]["isthing"], 0);
        assert_eq!(doc["categories"][9]["name"], "Bag");
        let ds = CocoPanopticDataset::new(&out, "val").unwrap();
        assert_eq!(ds.info().classes.len(), FASHION_CLASSES.len());
        for (i, sem) in sems.iter().enumerate() {
            let sample = ds.get(i).unwrap();
            let mut got: Vec<(u32, usize)> = sample
                .instances
                .unwrap()
                .iter()
                .map(|a| (a.class_id, a.mask.iter().filter(|&&v| v).count()))
                .collect();
            got.sort();
            let mut want = vec![(0, h * w - 44), (3 + i as u32, 12), (9, 32)];
            want.sort();
            assert_eq!(got, want);
            let labels: Vec<u32> = sample
                .semantic
                .unwrap()
                .iter()
                .map(|&v| u32::from(v))
                .collect();
            let sem: Vec<u32> = sem.iter().map(|&v| u32::from(v)).collect();
            assert_eq!(labels, sem);
        }
    }
}
