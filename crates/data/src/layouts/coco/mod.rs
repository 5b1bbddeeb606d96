//! COCO panoptic and instance annotations, as mmdet 3.x reads them.
//!
//! # Panoptic ([`CocoPanopticDataset`])
//! `annotations/panoptic_{split}2017.json` + `annotations/panoptic_{split}2017/*.png` +
//! `{split}2017/*.jpg` (mmdet `CocoPanopticDataset` + `LoadPanopticAnnotations`). The PNG's
//! RGB is a segment id (`R + 256 G + 256^2 B`, panopticapi `rgb2id`). Categories get contiguous
//! class indices in the JSON's order (COCO: 80 things, then 53 stuff, as mmdet's `cat2label`).
//! - semantic map: each listed segment's pixels get its class (crowd segments too, as mmdet);
//!   id 0 (VOID) and ids not listed in `segments_info` are 255;
//! - instances: every listed segment, things and stuff, in `segments_info` order, with
//!   `iscrowd`; a listed segment that has no pixel in the PNG is dropped.
//!
//! Every image needs exactly one annotation.
//!
//! # Instances ([`CocoInstanceDataset`])
//! `annotations/instances_{split}2017.json` + `{split}2017/*.jpg` (mmdet `CocoDataset` +
//! `LoadAnnotations(with_mask=True)`). Segmentations may be polygons (rasterised as
//! pycocotools' `frPyObjects` + `merge`, [`crate::Rle::from_polygons`]), uncompressed RLE
//! (`counts` a list) or compressed RLE (`counts` a string). As mmdet's `_process_masks`,
//! polygons with an odd number of coordinates or fewer than 3 points are dropped, and an
//! annotation left without polygons is skipped. Images without annotations are kept (empty
//! instance list; mmdet's `filter_empty_gt` is a training-time filter left to the caller).
//! - instances: in the JSON's annotation order, with `iscrowd`;
//! - semantic map, painted from the instances (COCO has no background class): pixels of no
//!   instance are 255; non-crowd instances are painted in annotation order, a later one over
//!   an earlier one; then crowd regions become 255 where no non-crowd instance covers them.
//!   Crowd regions are "ignore" in training for mmdet (`ignore_flag`) and detectron2
//!   (crowd annotations are dropped and their pixels never count as background), while a
//!   pixel explicitly assigned to a single instance keeps that instance's class.
//!
//! Both check the JSON when constructed (categories, image ids, that every image file exists,
//! RLE sizes) and decode in [`SegDataset::get`](crate::SegDataset::get); a whole COCO train
//! JSON is held in memory.

mod instances;
mod panoptic;

pub use instances::CocoInstanceDataset;
pub use panoptic::CocoPanopticDataset;

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::require_file;
use crate::io::{bad_file, read_rgb8};
use crate::{DatasetInfo, Result};

#[derive(Deserialize)]
struct ImageJson {
    id: u64,
    file_name: String,
    height: usize,
    width: usize,
}

#[derive(Deserialize)]
struct CategoryJson {
    id: u64,
    name: String,
    #[serde(default)]
    isthing: Option<u64>,
    #[serde(default)]
    color: Option<[u8; 3]>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    require_file(path, "annotation JSON")?;
    let text =
        std::fs::read_to_string(path).map_err(|e| bad_file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad_file(path, format!("bad JSON: {e}")))
}

/// The ignore index of a COCO-style set with `classes` categories: mmdet's 255 while that
/// is not a class (COCO's 133), else `u16::MAX` (LVIS-sized sets, 16-bit labels).
fn coco_ignore(classes: usize) -> u16 {
    if classes <= 255 {
        255
    } else {
        u16::MAX
    }
}

/// Contiguous classes from the JSON categories: (id -> class index, info pieces).
struct Categories {
    index: HashMap<u64, u32>,
    ids: Vec<u64>,
    names: Vec<String>,
    palette: Vec<[u8; 3]>,
    things: Vec<u32>,
}

fn categories(json: &Path, cats: &[CategoryJson], all_things: bool) -> Result<Categories> {
    if cats.is_empty() || cats.len() > usize::from(u16::MAX) {
        return Err(bad_file(
            json,
            format!(
                "needs 1..=65535 categories (16-bit labels), has {}",
                cats.len()
            ),
        ));
    }
    let mut index = HashMap::new();
    for (i, c) in cats.iter().enumerate() {
        if index.insert(c.id, i as u32).is_some() {
            return Err(bad_file(
                json,
                format!("category id {} is listed twice", c.id),
            ));
        }
    }
    let palette = if cats.iter().all(|c| c.color.is_some()) {
        cats.iter().map(|c| c.color.unwrap_or_default()).collect()
    } else {
        crate::palette::voc_palette(cats.len())
    };
    let things = cats
        .iter()
        .enumerate()
        .filter(|(_, c)| all_things || c.isthing.unwrap_or(0) != 0)
        .map(|(i, _)| i as u32)
        .collect();
    Ok(Categories {
        index,
        ids: cats.iter().map(|c| c.id).collect(),
        names: cats.iter().map(|c| c.name.clone()).collect(),
        palette,
        things,
    })
}

impl Categories {
    fn info(&self) -> DatasetInfo {
        DatasetInfo {
            classes: self.names.clone(),
            palette: self.palette.clone(),
            ignore_index: coco_ignore(self.names.len()),
            thing_classes: self.things.clone(),
        }
    }

    fn class(&self, json: &Path, id: u64, what: &str) -> Result<u32> {
        self.index
            .get(&id)
            .copied()
            .ok_or_else(|| bad_file(json, format!("{what} has unknown category_id {id}")))
    }
}

/// The listed images: id -> position, each file required to exist.
fn image_index(json: &Path, img_dir: &Path, images: &[ImageJson]) -> Result<HashMap<u64, usize>> {
    let mut index = HashMap::new();
    for (i, im) in images.iter().enumerate() {
        if index.insert(im.id, i).is_some() {
            return Err(bad_file(
                json,
                format!("image id {} is listed twice", im.id),
            ));
        }
        if im.width == 0 || im.height == 0 {
            return Err(bad_file(
                json,
                format!(
                    "image {} has an empty size {} x {}",
                    im.id, im.width, im.height
                ),
            ));
        }
        require_file(&img_dir.join(&im.file_name), "image listed in the JSON")?;
    }
    Ok(index)
}

/// Reads an image and checks it against the JSON's size.
fn read_listed_image(path: &Path, json: &Path, w: usize, h: usize) -> Result<crate::image::Rgb8> {
    let img = read_rgb8(path)?;
    if (img.width, img.height) != (w, h) {
        return Err(bad_file(
            path,
            format!(
                "image is {} x {} but {} says {w} x {h}",
                img.width,
                img.height,
                json.display()
            ),
        ));
    }
    Ok(img)
}
