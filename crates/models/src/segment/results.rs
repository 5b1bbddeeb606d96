//! The typed results of [`crate::Model::segment`] (and the facade's `Segmenter::segment`): a class map ([`SemanticResult`]),
//! object instances with COCO RLE masks ([`InstanceResult`]), or panoptic segments
//! ([`PanopticResult`]), each carrying the model's class names and palette so that it can be
//! painted, overlaid and saved without the model.
//!
//! [`SemanticResult`] is segkit's one semantic result: the models' own outputs (segkit-models'
//! [`crate::Prediction`], the OneFormer post-processing's `SemanticResult` with its per-class
//! scores) become one with [`SemanticResult::from_prediction`] and
//! [`SemanticResult::from_oneformer`]; instance and panoptic results come from the OneFormer
//! post-processing with [`InstanceResult::from_oneformer`] and
//! [`PanopticResult::from_oneformer`].
//!
//! # JSON
//! Every result implements `serde::Serialize` (what `segkit infer` writes to `STEM.json`,
//! next to the image information). The per-pixel maps (class map, segment map) are not
//! serialised — they are images (`save_classes` writes them as PNG) — and neither are the
//! class names and palette; the JSON gives each class present with its area instead, and
//! each mask as a COCO RLE. The shape, stable:
//!
//! ```text
//! {
//!   "task": "semantic" | "instance" | "panoptic",    (Segmentation only)
//!   "height": 96,
//!   "width": 128,
//!   "classes": [                                     (ClassArea: classes present, by id)
//!     {"id": 1, "name": "tree", "area": 1234, "fraction": 0.1004}
//!   ],
//!   "unlabeled_area": 0,                             (pixels of no class; 0 for semantic models)
//!   "instances": [                                   (InstanceResult only; Instance)
//!     {"id": 1, "class_id": 1, "class_name": "tree", "score": 0.93, "area": 1234,
//!      "bbox": [x, y, w, h], "segmentation": {"size": [96, 128], "counts": "..."}}
//!   ],
//!   "segments": [                                    (PanopticResult only; PanopticSegment)
//!     {"id": 1, "class_id": 1, "class_name": "tree", "isthing": true | false | null,
//!      "score": 0.93, "area": 1234, "bbox": [x, y, w, h],
//!      "segmentation": {"size": [96, 128], "counts": "..."}}
//!   ]
//! }
//! ```
//!
//! `segmentation` is pycocotools' compressed RLE (`{"size": [h, w], "counts": str}`,
//! column-major), which `pycocotools.mask.decode` reads as is; `bbox` is COCO's `[x, y, w, h]`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use image::{DynamicImage, GrayImage, ImageBuffer, ImageFormat, Luma, RgbImage};
use segkit_data::palette;
pub use segkit_data::Rle;
use serde::Serialize;

use super::Task;
use crate::{Error, Result};

/// The class id of pixels that no segment covers (instance and panoptic results seen as a
/// class map; never produced by a semantic model).
pub const UNLABELED: u32 = u32::MAX;

pub(super) fn invalid(msg: impl Into<String>) -> Error {
    Error::Core(segkit_core::Error::InvalidArgument(msg.into()))
}

pub(super) fn data_err(e: segkit_data::Error) -> Error {
    Error::Core(e)
}

/// The name of class `id` in `classes`: `"unlabeled"` for [`UNLABELED`], `"class_<id>"`
/// when the model has no name for it.
pub(super) fn class_name(classes: &[String], id: u32) -> Cow<'_, str> {
    if id == UNLABELED {
        return Cow::Borrowed("unlabeled");
    }
    match classes.get(id as usize) {
        Some(n) => Cow::Borrowed(n.as_str()),
        None => Cow::Owned(format!("class_{id}")),
    }
}

/// One class of a [`SemanticResult`] and how much of the image it covers.
///
/// JSON: `{"id": 1, "name": "tree", "area": 1234, "fraction": 0.1004}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassArea {
    /// Class id (JSON `id`).
    #[serde(rename = "id")]
    pub class_id: u32,
    /// Class name (JSON `name`).
    #[serde(rename = "name")]
    pub class_name: String,
    /// Pixels of the class.
    pub area: u64,
    /// `area` over the image's pixel count.
    pub fraction: f64,
}

/// A class per pixel.
///
/// JSON (see the [module docs](self)): `height`, `width`, the classes present with their
/// areas (`classes`, [`SemanticResult::class_areas`]) and `unlabeled_area`; the class map
/// itself is an image ([`SemanticResult::save_classes`]), not JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticResult {
    /// Map height (the input image's).
    pub height: usize,
    /// Map width.
    pub width: usize,
    /// Class id per pixel, row-major (`height * width`); [`UNLABELED`] where no class was
    /// assigned (only in the class-map view of instance results and of panoptic results'
    /// empty areas).
    pub class_map: Vec<u32>,
    /// Class names, indexed by class id.
    pub classes: Vec<String>,
    /// One RGB colour per class.
    pub palette: Vec<[u8; 3]>,
}

impl SemanticResult {
    /// The name of class `id` (`"unlabeled"` for [`UNLABELED`], `"class_<id>"` when the
    /// model has no name for it).
    pub fn class_name(&self, id: u32) -> Cow<'_, str> {
        class_name(&self.classes, id)
    }

    /// The classes present in the map, by class id, with their pixel counts and fractions
    /// ([`UNLABELED`] pixels are not listed; see [`SemanticResult::unlabeled_area`]).
    pub fn class_areas(&self) -> Vec<ClassArea> {
        let mut counts: std::collections::BTreeMap<u32, u64> = Default::default();
        for &c in &self.class_map {
            if c != UNLABELED {
                *counts.entry(c).or_default() += 1;
            }
        }
        let total = self.class_map.len().max(1) as f64;
        counts
            .into_iter()
            .map(|(id, area)| ClassArea {
                class_id: id,
                class_name: self.class_name(id).into_owned(),
                area,
                fraction: area as f64 / total,
            })
            .collect()
    }

    /// Pixels without a class.
    pub fn unlabeled_area(&self) -> u64 {
        self.class_map.iter().filter(|&&c| c == UNLABELED).count() as u64
    }

    /// The class map as a grey image of class ids: 8-bit when the model has at most 255
    /// classes (unlabeled pixels 255), else 16-bit (unlabeled pixels 65535).
    ///
    /// Errors: more than 65535 classes.
    pub fn class_image(&self) -> Result<DynamicImage> {
        let (w, h) = dims_u32(self.width, self.height)?;
        let n = self.classes.len();
        if n <= 255 {
            let px: Vec<u8> = self
                .class_map
                .iter()
                .map(|&c| u8::try_from(c).unwrap_or(u8::MAX))
                .collect();
            let img = GrayImage::from_raw(w, h, px)
                .ok_or_else(|| invalid("class map size does not match its dimensions"))?;
            Ok(DynamicImage::ImageLuma8(img))
        } else if n <= 65535 {
            let px: Vec<u16> = self
                .class_map
                .iter()
                .map(|&c| u16::try_from(c).unwrap_or(u16::MAX))
                .collect();
            let img: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_raw(w, h, px)
                .ok_or_else(|| invalid("class map size does not match its dimensions"))?;
            Ok(DynamicImage::ImageLuma16(img))
        } else {
            Err(invalid(format!(
                "{n} classes do not fit a 16-bit class image"
            )))
        }
    }

    /// The class map painted with the palette (segkit-data's `colorize`; unlabeled pixels
    /// and classes without a colour are black).
    pub fn color_image(&self) -> Result<RgbImage> {
        let (w, h) = dims_u32(self.width, self.height)?;
        let ids: Vec<i64> = self
            .class_map
            .iter()
            .map(|&c| if c == UNLABELED { -1 } else { c as i64 })
            .collect();
        RgbImage::from_raw(w, h, palette::colorize(&ids, &self.palette))
            .ok_or_else(|| invalid("class map size does not match its dimensions"))
    }

    /// The palette colours blended over `image` (which must have the map's size):
    /// `(1 - alpha) * image + alpha * colour`, as mmseg's visualizer (segkit-data's
    /// `overlay`). Unlabeled pixels are blended with black.
    pub fn overlay_image(&self, image: &DynamicImage, alpha: f64) -> Result<RgbImage> {
        let rgb = crate::image::to_rgb8(image)?;
        if (rgb.width() as usize, rgb.height() as usize) != (self.width, self.height) {
            return Err(invalid(format!(
                "overlay: the image is {} x {} but the segmentation is {} x {}",
                rgb.width(),
                rgb.height(),
                self.width,
                self.height
            )));
        }
        let color = self.color_image()?;
        let out = palette::overlay(rgb.as_raw(), color.as_raw(), alpha).map_err(data_err)?;
        let (w, h) = dims_u32(self.width, self.height)?;
        RgbImage::from_raw(w, h, out).ok_or_else(|| invalid("overlay size mismatch"))
    }

    /// Saves [`SemanticResult::color_image`] (format from the extension: `.png`, `.jpg`),
    /// atomically (a temporary file next to it, then a rename).
    pub fn save_color(&self, path: impl AsRef<Path>) -> Result<()> {
        save_image(&DynamicImage::ImageRgb8(self.color_image()?), path.as_ref())
    }

    /// Saves [`SemanticResult::overlay_image`] atomically.
    pub fn save_overlay(
        &self,
        path: impl AsRef<Path>,
        image: &DynamicImage,
        alpha: f64,
    ) -> Result<()> {
        save_image(
            &DynamicImage::ImageRgb8(self.overlay_image(image, alpha)?),
            path.as_ref(),
        )
    }

    /// Saves [`SemanticResult::class_image`] atomically (use `.png`: the class ids must
    /// survive exactly).
    pub fn save_classes(&self, path: impl AsRef<Path>) -> Result<()> {
        save_image(&self.class_image()?, path.as_ref())
    }
}

/// One object of an [`InstanceResult`].
///
/// JSON: `{"id", "class_id", "class_name", "score", "area", "bbox", "segmentation"}`, the
/// mask as a COCO RLE `{"size": [h, w], "counts": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    /// Segment id (its value in [`InstanceResult::segment_map`]; 1, 2, ...).
    pub id: u32,
    /// Class id.
    pub class_id: u32,
    /// Class name.
    pub class_name: String,
    /// Class probability of the query (OneFormer) or of the detection (PANet).
    pub score: f64,
    /// Pixels of the mask.
    pub area: u64,
    /// COCO's `bbox` `[x, y, w, h]`: the mask's tight box (OneFormer), or the detector's own
    /// box (PANet: Detectron's `xyxy_to_xywh`, `w = x2 - x1 + 1`).
    pub bbox: [f64; 4],
    /// The mask, COCO run-length encoded (`Rle::to_compressed` gives the `counts` string;
    /// JSON `segmentation`).
    #[serde(rename = "segmentation", serialize_with = "super::json::coco_rle")]
    pub mask: Rle,
}

/// Object instances. OneFormer's do not overlap; a detector's masks may (PANet), each whole in
/// its RLE, and [`InstanceResult::segment_map`] then shows the highest-scoring one.
///
/// JSON: as [`SemanticResult`]'s (for [`InstanceResult::to_semantic`]) plus `instances`
/// ([`Instance`]); the segment map is not serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceResult {
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Segment id per pixel, row-major; 0 where no instance is (where masks overlap, the
    /// highest-scoring instance's).
    pub segment_map: Vec<u32>,
    /// The instances, in the order the post-processing lists them.
    pub instances: Vec<Instance>,
    /// Class names, indexed by class id.
    pub classes: Vec<String>,
    /// One RGB colour per class.
    pub palette: Vec<[u8; 3]>,
}

/// One segment of a [`PanopticResult`].
///
/// JSON: `{"id", "class_id", "class_name", "isthing", "score", "area", "bbox",
/// "segmentation"}` (`isthing` is `null` when unknown).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PanopticSegment {
    /// Segment id (its value in [`PanopticResult::segment_map`]).
    pub id: u32,
    /// Class id.
    pub class_id: u32,
    /// Class name.
    pub class_name: String,
    /// Whether the class is a "thing" (countable object); `None` when the model's label set
    /// does not say (segkit knows ADE20K's, COCO's and Cityscapes' thing classes).
    pub isthing: Option<bool>,
    /// Class probability of the query (the highest one for a fused segment).
    pub score: f64,
    /// Pixels of the segment.
    pub area: u64,
    /// Tight box `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// The mask, COCO run-length encoded (JSON `segmentation`).
    #[serde(rename = "segmentation", serialize_with = "super::json::coco_rle")]
    pub mask: Rle,
}

/// A panoptic segmentation: every pixel in at most one segment, stuff and things.
///
/// JSON: as [`SemanticResult`]'s (for [`PanopticResult::to_semantic`]) plus `segments`
/// ([`PanopticSegment`]); the segment map is not serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct PanopticResult {
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Segment id per pixel, row-major; 0 where no segment is.
    pub segment_map: Vec<u32>,
    /// The segments, one per id.
    pub segments: Vec<PanopticSegment>,
    /// Class names, indexed by class id.
    pub classes: Vec<String>,
    /// One RGB colour per class.
    pub palette: Vec<[u8; 3]>,
}

/// The result of [`crate::Model::segment`] (and the facade's `Segmenter::segment`), by task.
///
/// JSON: the result's own, with `"task": "semantic" | "instance" | "panoptic"` first (see
/// the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Segmentation {
    /// A class per pixel.
    Semantic(SemanticResult),
    /// Object instances.
    Instance(InstanceResult),
    /// Panoptic segments.
    Panoptic(PanopticResult),
}

fn class_view(
    height: usize,
    width: usize,
    segment_map: &[u32],
    segment_classes: impl Iterator<Item = (u32, u32)>,
    classes: &[String],
    palette: &[[u8; 3]],
) -> SemanticResult {
    let lut: HashMap<u32, u32> = segment_classes.collect();
    SemanticResult {
        height,
        width,
        class_map: segment_map
            .iter()
            .map(|s| lut.get(s).copied().unwrap_or(UNLABELED))
            .collect(),
        classes: classes.to_vec(),
        palette: palette.to_vec(),
    }
}

impl InstanceResult {
    /// The class-map view: each instance's pixels get its class, the rest [`UNLABELED`].
    pub fn to_semantic(&self) -> SemanticResult {
        class_view(
            self.height,
            self.width,
            &self.segment_map,
            self.instances.iter().map(|i| (i.id, i.class_id)),
            &self.classes,
            &self.palette,
        )
    }
}

impl PanopticResult {
    /// The class-map view: each segment's pixels get its class, the rest [`UNLABELED`].
    pub fn to_semantic(&self) -> SemanticResult {
        class_view(
            self.height,
            self.width,
            &self.segment_map,
            self.segments.iter().map(|s| (s.id, s.class_id)),
            &self.classes,
            &self.palette,
        )
    }
}

impl Segmentation {
    /// The task that produced it.
    pub fn task(&self) -> Task {
        match self {
            Segmentation::Semantic(_) => Task::Semantic,
            Segmentation::Instance(_) => Task::Instance,
            Segmentation::Panoptic(_) => Task::Panoptic,
        }
    }

    /// Image height.
    pub fn height(&self) -> usize {
        match self {
            Segmentation::Semantic(r) => r.height,
            Segmentation::Instance(r) => r.height,
            Segmentation::Panoptic(r) => r.height,
        }
    }

    /// Image width.
    pub fn width(&self) -> usize {
        match self {
            Segmentation::Semantic(r) => r.width,
            Segmentation::Instance(r) => r.width,
            Segmentation::Panoptic(r) => r.width,
        }
    }

    /// The result as a class map, whatever the task: the semantic result itself, or the
    /// class of each instance / panoptic segment (pixels outside every segment are
    /// [`UNLABELED`]). This is what `save_color` / `save_overlay` paint.
    pub fn semantic(&self) -> Cow<'_, SemanticResult> {
        match self {
            Segmentation::Semantic(r) => Cow::Borrowed(r),
            Segmentation::Instance(r) => Cow::Owned(r.to_semantic()),
            Segmentation::Panoptic(r) => Cow::Owned(r.to_semantic()),
        }
    }

    /// The instances, for an instance result.
    pub fn as_instance(&self) -> Option<&InstanceResult> {
        match self {
            Segmentation::Instance(r) => Some(r),
            _ => None,
        }
    }

    /// The panoptic segments, for a panoptic result.
    pub fn as_panoptic(&self) -> Option<&PanopticResult> {
        match self {
            Segmentation::Panoptic(r) => Some(r),
            _ => None,
        }
    }
}

fn dims_u32(width: usize, height: usize) -> Result<(u32, u32)> {
    match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(invalid(format!(
            "image size {width} x {height} is too large"
        ))),
    }
}

/// Encodes `img` in `format` into memory.
pub fn encode_image(img: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format)
        .map_err(|e| Error::BadImage {
            what: format!("<{format:?} encoder>"),
            reason: e.to_string(),
        })?;
    Ok(buf.into_inner())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed,
/// then renamed over `path` (on failure the temporary file is removed and `path` is left as
/// it was).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source: std::io::Error| {
        Error::Core(segkit_core::Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let tmp = temp_path(path);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io(e))
        }
    }
}

/// A hidden temporary name next to `path`: `.NAME.tmp-PID`.
pub(crate) fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn save_image(img: &DynamicImage, path: &Path) -> Result<()> {
    let format = ImageFormat::from_path(path).map_err(|e| Error::BadImage {
        what: path.display().to_string(),
        reason: format!("cannot choose an image format from the file name: {e}"),
    })?;
    let bytes = encode_image(img, format).map_err(|e| match e {
        Error::BadImage { reason, .. } => Error::BadImage {
            what: path.display().to_string(),
            reason,
        },
        other => other,
    })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sem(classes: usize) -> SemanticResult {
        SemanticResult {
            height: 2,
            width: 3,
            class_map: vec![0, 1, 1, 2, UNLABELED, (classes - 1) as u32],
            classes: (0..classes).map(|i| format!("c{i}")).collect(),
            palette: palette::voc_palette(classes),
        }
    }

    #[test]
    fn class_images_and_areas() {
        let s = sem(3);
        let DynamicImage::ImageLuma8(g) = s.class_image().unwrap() else {
            panic!("8-bit expected")
        };
        assert_eq!(g.as_raw(), &[0, 1, 1, 2, 255, 2]);
        let s = sem(300);
        let DynamicImage::ImageLuma16(g) = s.class_image().unwrap() else {
            panic!("16-bit expected")
        };
        assert_eq!(g.as_raw(), &[0, 1, 1, 2, 65535, 299]);
        let a = s.class_areas();
        assert_eq!(a[1].area, 2);
        assert!((a[1].fraction - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.unlabeled_area(), 1);
        let c = s.color_image().unwrap();
        assert_eq!(c.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(1, 0).0, [128, 0, 0]);
        let img = DynamicImage::new_rgb8(3, 2);
        assert!(s.overlay_image(&img, 0.5).is_ok());
        assert!(s.overlay_image(&img, 1.5).is_err());
        assert!(s.overlay_image(&DynamicImage::new_rgb8(2, 2), 0.5).is_err());
    }

    #[test]
    fn saves_are_atomic_and_typed() {
        let dir = tempfile::tempdir().unwrap();
        let s = sem(3);
        s.save_color(dir.path().join("c.png")).unwrap();
        s.save_classes(dir.path().join("k.png")).unwrap();
        let back = image::open(dir.path().join("k.png")).unwrap();
        assert_eq!(back.to_luma8().as_raw(), &[0, 1, 1, 2, 255, 2]);
        let e = s.save_color(dir.path().join("c.unknownext")).unwrap_err();
        assert!(matches!(e, Error::BadImage { .. }), "{e}");
        let e = s
            .save_color(dir.path().join("missing").join("c.png"))
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }
}
