//! [`CocoPanopticDataset`]: `panoptic_{split}2017.json` and its PNGs of segment ids.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{categories, image_index, read_json, read_listed_image, CategoryJson, ImageJson};
use crate::io::{bad_file, read_rgb_png};
use crate::layouts::{check_same_size, out_of_range, require_dir, require_file};
use crate::{DatasetInfo, InstanceAnnotation, Result, Sample, SegDataset};

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

/// COCO panoptic segmentation (see the doc of the `coco` module).
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
                semantic[p] = e.segments[k].class as u16;
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
