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
//! RLE sizes) and decode in [`SegDataset::get`]; a whole COCO train JSON is held in memory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{check_same_size, out_of_range, require_dir, require_file};
use crate::io::{bad_file, read_rgb8, read_rgb_png};
use crate::{DatasetInfo, InstanceAnnotation, Result, Rle, Sample, SegDataset};

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

#[derive(Deserialize)]
struct PanopticJson {
    images: Vec<ImageJson>,
    annotations: Vec<PanopticAnnJson>,
    categories: Vec<CategoryJson>,
}

#[derive(Deserialize)]
struct PanopticAnnJson {
    image_id: u64,
    file_name: String,
    segments_info: Vec<SegmentJson>,
}

#[derive(Deserialize)]
struct SegmentJson {
    id: u32,
    category_id: u64,
    #[serde(default)]
    iscrowd: u64,
}

#[derive(Deserialize)]
struct InstancesJson {
    images: Vec<ImageJson>,
    #[serde(default)]
    annotations: Vec<InstanceAnnJson>,
    categories: Vec<CategoryJson>,
}

#[derive(Deserialize)]
struct InstanceAnnJson {
    #[serde(default)]
    id: u64,
    image_id: u64,
    category_id: u64,
    segmentation: SegmentationJson,
    #[serde(default)]
    iscrowd: u64,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum SegmentationJson {
    Polygons(Vec<Vec<f64>>),
    Rle {
        counts: CountsJson,
        size: [usize; 2],
    },
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum CountsJson {
    Uncompressed(Vec<u32>),
    Compressed(String),
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    require_file(path, "annotation JSON")?;
    let text =
        std::fs::read_to_string(path).map_err(|e| bad_file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad_file(path, format!("bad JSON: {e}")))
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
    if cats.is_empty() || cats.len() > 255 {
        return Err(bad_file(
            json,
            format!("needs 1..=255 categories, has {}", cats.len()),
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
            ignore_index: 255,
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

/// A segment of a panoptic annotation.
#[derive(Debug, Clone)]
struct Segment {
    id: u32,
    class: u32,
    iscrowd: bool,
}

#[derive(Debug, Clone)]
struct PanopticEntry {
    image: PathBuf,
    png: PathBuf,
    image_id: u64,
    width: usize,
    height: usize,
    segments: Vec<Segment>,
}

/// COCO panoptic segmentation (see the module doc).
///
/// ```no_run
/// use segkit_data::{layouts::CocoPanopticDataset, SegDataset};
/// let val = CocoPanopticDataset::new("data/coco", "val")?;
/// assert_eq!(val.info().classes.len(), 133);
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CocoPanopticDataset {
    json: PathBuf,
    entries: Vec<PanopticEntry>,
    category_ids: Vec<u64>,
    info: DatasetInfo,
}

impl CocoPanopticDataset {
    /// `split` (`"train"` / `"val"`) of the standard layout under `root`:
    /// `annotations/panoptic_{split}2017.json`, `annotations/panoptic_{split}2017/`,
    /// `{split}2017/`.
    ///
    /// Errors: as [`CocoPanopticDataset::from_paths`].
    pub fn new(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let root = root.as_ref();
        require_dir(root, "dataset root")?;
        let ann = root.join("annotations");
        Self::from_paths(
            ann.join(format!("panoptic_{split}2017.json")),
            ann.join(format!("panoptic_{split}2017")),
            root.join(format!("{split}2017")),
        )
    }

    /// The annotations of `json`, their PNGs in `png_dir` and images in `img_dir`.
    ///
    /// Errors: [`crate::Error::BadFile`] naming the JSON (unreadable, bad JSON, duplicate or unknown
    /// ids, an image without annotation, segment id 0, more than 255 categories), or the
    /// missing folder, image or PNG.
    pub fn from_paths(
        json: impl AsRef<Path>,
        png_dir: impl AsRef<Path>,
        img_dir: impl AsRef<Path>,
    ) -> Result<Self> {
        let (json, png_dir, img_dir) = (json.as_ref(), png_dir.as_ref(), img_dir.as_ref());
        require_dir(img_dir, "image folder")?;
        require_dir(png_dir, "panoptic PNG folder")?;
        let data: PanopticJson = read_json(json)?;
        let cats = categories(json, &data.categories, false)?;
        let images = image_index(json, img_dir, &data.images)?;
        let mut anns: Vec<Option<&PanopticAnnJson>> = vec![None; data.images.len()];
        for ann in &data.annotations {
            let Some(&i) = images.get(&ann.image_id) else {
                return Err(bad_file(
                    json,
                    format!(
                        "annotation {} has unknown image_id {}",
                        ann.file_name, ann.image_id
                    ),
                ));
            };
            if anns[i].replace(ann).is_some() {
                return Err(bad_file(
                    json,
                    format!("image id {} has two annotations", ann.image_id),
                ));
            }
        }
        let mut entries = Vec::with_capacity(data.images.len());
        for (im, ann) in data.images.iter().zip(anns) {
            let Some(ann) = ann else {
                return Err(bad_file(
                    json,
                    format!("image {} (id {}) has no annotation", im.file_name, im.id),
                ));
            };
            let png = png_dir.join(&ann.file_name);
            require_file(&png, &format!("panoptic PNG of image {}", im.file_name))?;
            let mut seen = HashSet::new();
            let mut segments = Vec::with_capacity(ann.segments_info.len());
            for s in &ann.segments_info {
                if s.id == 0 {
                    return Err(bad_file(
                        json,
                        format!(
                            "annotation {}: segment id 0 is reserved for VOID",
                            ann.file_name
                        ),
                    ));
                }
                if !seen.insert(s.id) {
                    return Err(bad_file(
                        json,
                        format!(
                            "annotation {}: segment id {} is listed twice",
                            ann.file_name, s.id
                        ),
                    ));
                }
                let what = format!("annotation {} segment {}", ann.file_name, s.id);
                segments.push(Segment {
                    id: s.id,
                    class: cats.class(json, s.category_id, &what)?,
                    iscrowd: s.iscrowd != 0,
                });
            }
            entries.push(PanopticEntry {
                image: img_dir.join(&im.file_name),
                png,
                image_id: im.id,
                width: im.width,
                height: im.height,
                segments,
            });
        }
        Ok(CocoPanopticDataset {
            json: json.to_path_buf(),
            entries,
            info: cats.info(),
            category_ids: cats.ids,
        })
    }

    /// The COCO category id of each class index.
    pub fn category_ids(&self) -> &[u64] {
        &self.category_ids
    }

    /// The COCO image id of sample `index`.
    pub fn image_id(&self, index: usize) -> Option<u64> {
        self.entries.get(index).map(|e| e.image_id)
    }
}

impl SegDataset for CocoPanopticDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn info(&self) -> &DatasetInfo {
        &self.info
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let e = self
            .entries
            .get(index)
            .ok_or_else(|| out_of_range(index, self.entries.len()))?;
        let img = read_listed_image(&e.image, &self.json, e.width, e.height)?;
        let png = read_rgb_png(&e.png)?;
        check_same_size(
            &e.png,
            (png.width, png.height),
            &e.image,
            (img.width, img.height),
        )?;
        let ids = crate::metrics::rgb_to_id(&png.data)?;
        let slot: HashMap<u32, usize> = e
            .segments
            .iter()
            .enumerate()
            .map(|(k, s)| (s.id, k))
            .collect();
        let n = ids.len();
        let mut semantic = vec![self.info.ignore_index; n];
        let mut masks = vec![Vec::new(); e.segments.len()];
        for (p, id) in ids.iter().enumerate() {
            if let Some(&k) = slot.get(id) {
                semantic[p] = e.segments[k].class as u8;
                if masks[k].is_empty() {
                    masks[k] = vec![false; n];
                }
                masks[k][p] = true;
            }
        }
        let instances = e
            .segments
            .iter()
            .zip(masks)
            .filter(|(_, m)| !m.is_empty())
            .map(|(s, mask)| InstanceAnnotation {
                class_id: s.class,
                mask,
                iscrowd: s.iscrowd,
            })
            .collect();
        Ok(Sample {
            path: e.image.clone(),
            width: img.width,
            height: img.height,
            image: img.data,
            semantic: Some(semantic),
            instances: Some(instances),
        })
    }
}

/// One object annotation.
#[derive(Debug, Clone)]
struct ObjectAnn {
    id: u64,
    class: u32,
    iscrowd: bool,
    segmentation: SegmentationJson,
}

#[derive(Debug, Clone)]
struct InstanceEntry {
    image: PathBuf,
    image_id: u64,
    width: usize,
    height: usize,
    anns: Vec<ObjectAnn>,
}

/// COCO instance segmentation (see the module doc).
///
/// ```no_run
/// use segkit_data::{layouts::CocoInstanceDataset, SegDataset};
/// let val = CocoInstanceDataset::new("data/coco", "val")?;
/// assert_eq!(val.info().classes.len(), 80);
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CocoInstanceDataset {
    json: PathBuf,
    entries: Vec<InstanceEntry>,
    category_ids: Vec<u64>,
    info: DatasetInfo,
}

impl CocoInstanceDataset {
    /// `split` (`"train"` / `"val"`) of the standard layout under `root`:
    /// `annotations/instances_{split}2017.json` and `{split}2017/`.
    ///
    /// Errors: as [`CocoInstanceDataset::from_paths`].
    pub fn new(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let root = root.as_ref();
        require_dir(root, "dataset root")?;
        Self::from_paths(
            root.join("annotations")
                .join(format!("instances_{split}2017.json")),
            root.join(format!("{split}2017")),
        )
    }

    /// The annotations of `json` with their images in `img_dir`.
    ///
    /// Errors: [`crate::Error::BadFile`] naming the JSON (unreadable, bad JSON, duplicate or unknown
    /// ids, an RLE whose size is not its image's, more than 255 categories), or the missing
    /// folder or image.
    pub fn from_paths(json: impl AsRef<Path>, img_dir: impl AsRef<Path>) -> Result<Self> {
        let (json, img_dir) = (json.as_ref(), img_dir.as_ref());
        require_dir(img_dir, "image folder")?;
        let data: InstancesJson = read_json(json)?;
        let cats = categories(json, &data.categories, true)?;
        let images = image_index(json, img_dir, &data.images)?;
        let mut entries: Vec<InstanceEntry> = data
            .images
            .iter()
            .map(|im| InstanceEntry {
                image: img_dir.join(&im.file_name),
                image_id: im.id,
                width: im.width,
                height: im.height,
                anns: Vec::new(),
            })
            .collect();
        for ann in data.annotations {
            let Some(&i) = images.get(&ann.image_id) else {
                return Err(bad_file(
                    json,
                    format!(
                        "annotation {} has unknown image_id {}",
                        ann.id, ann.image_id
                    ),
                ));
            };
            let what = format!("annotation {}", ann.id);
            let class = cats.class(json, ann.category_id, &what)?;
            let entry = &mut entries[i];
            let segmentation = match ann.segmentation {
                SegmentationJson::Polygons(polys) => {
                    // mmdet `_process_masks`: keep polygons of >= 3 points.
                    let polys: Vec<Vec<f64>> = polys
                        .into_iter()
                        .filter(|p| p.len() % 2 == 0 && p.len() >= 6)
                        .collect();
                    if polys.is_empty() {
                        continue;
                    }
                    SegmentationJson::Polygons(polys)
                }
                SegmentationJson::Rle { counts, size } => {
                    if size != [entry.height, entry.width] {
                        return Err(bad_file(
                            json,
                            format!(
                                "annotation {}: RLE size {:?} is not its image's [{}, {}]",
                                ann.id, size, entry.height, entry.width
                            ),
                        ));
                    }
                    if let CountsJson::Uncompressed(c) = &counts {
                        let sum: u64 = c.iter().map(|&v| v as u64).sum();
                        if sum != (size[0] * size[1]) as u64 {
                            return Err(bad_file(
                                json,
                                format!(
                                    "annotation {}: RLE counts sum to {sum}, not {} x {}",
                                    ann.id, size[0], size[1]
                                ),
                            ));
                        }
                    }
                    SegmentationJson::Rle { counts, size }
                }
            };
            entry.anns.push(ObjectAnn {
                id: ann.id,
                class,
                iscrowd: ann.iscrowd != 0,
                segmentation,
            });
        }
        Ok(CocoInstanceDataset {
            json: json.to_path_buf(),
            entries,
            info: cats.info(),
            category_ids: cats.ids,
        })
    }

    /// The COCO category id of each class index.
    pub fn category_ids(&self) -> &[u64] {
        &self.category_ids
    }

    /// The COCO image id of sample `index`.
    pub fn image_id(&self, index: usize) -> Option<u64> {
        self.entries.get(index).map(|e| e.image_id)
    }

    fn mask(&self, a: &ObjectAnn, h: usize, w: usize) -> Result<Vec<bool>> {
        let rle = match &a.segmentation {
            SegmentationJson::Polygons(p) => Rle::from_polygons(p, h, w),
            SegmentationJson::Rle {
                counts: CountsJson::Uncompressed(c),
                ..
            } => Rle::new(h, w, c.clone()),
            SegmentationJson::Rle {
                counts: CountsJson::Compressed(s),
                ..
            } => Rle::from_compressed(s, h, w),
        }
        .map_err(|e| bad_file(&self.json, format!("annotation {}: {e}", a.id)))?;
        Ok(rle.to_mask().into_iter().map(|v| v != 0).collect())
    }
}

impl SegDataset for CocoInstanceDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn info(&self) -> &DatasetInfo {
        &self.info
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let e = self
            .entries
            .get(index)
            .ok_or_else(|| out_of_range(index, self.entries.len()))?;
        let img = read_listed_image(&e.image, &self.json, e.width, e.height)?;
        let (h, w) = (e.height, e.width);
        let ignore = self.info.ignore_index;
        let mut semantic = vec![ignore; h * w];
        let mut instances = Vec::with_capacity(e.anns.len());
        for a in &e.anns {
            let mask = self.mask(a, h, w)?;
            if !a.iscrowd {
                for (s, &m) in semantic.iter_mut().zip(&mask) {
                    if m {
                        *s = a.class as u8;
                    }
                }
            }
            instances.push(InstanceAnnotation {
                class_id: a.class,
                mask,
                iscrowd: a.iscrowd,
            });
        }
        // Crowd pixels stayed 255 unless a non-crowd instance covers them.
        Ok(Sample {
            path: e.image.clone(),
            width: img.width,
            height: img.height,
            image: img.data,
            semantic: Some(semantic),
            instances: Some(instances),
        })
    }
}
