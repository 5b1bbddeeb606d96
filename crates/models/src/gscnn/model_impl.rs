//! [`Gscnn`] as a [`Model`]: semantic segmentation at the image's size (the official
//! single-scale evaluation), every output by name for `segkit dump`.

use std::any::Any;

use candle_core::{Device, Tensor};
use image::{DynamicImage, GrayImage};

use super::Gscnn;
use crate::segment::{default_palette, unsupported, Model, Segmentation, SemanticResult, Task};
use crate::{PredictOptions, Result};

/// What [`Gscnn::predict_image`] returns: the class map and the shape stream's edge map.
#[derive(Debug, Clone)]
pub struct GscnnPrediction {
    /// The class map (argmax of `seg`) with the model's class names and palette.
    pub semantic: SemanticResult,
    /// `edge_out` as an 8-bit image (`round(255 * edge)`), `None` without the shape stream.
    pub edge: Option<GrayImage>,
}

impl Gscnn {
    /// Segments `image` at its own size (the official single-scale evaluation: `ToTensor`,
    /// `Normalize`, the network, argmax) and returns the edge map with it.
    ///
    /// Errors: [`crate::Error::BadImage`] for an empty image.
    pub fn predict_image(&self, image: &DynamicImage) -> Result<GscnnPrediction> {
        let rgb = crate::image::to_rgb8(image)?;
        let x = self.image_tensor(&rgb)?;
        let o = self.forward_t(&x, None, false)?;
        let (h, w) = (rgb.height() as usize, rgb.width() as usize);
        let class_map: Vec<u32> = o.seg.argmax(1)?.flatten_all()?.to_vec1()?;
        let semantic = SemanticResult::new(h, w, class_map, self.classes(), self.palette())?;
        let edge = match o.edge {
            Some(e) => {
                let v: Vec<f32> = e.flatten_all()?.to_vec1()?;
                let px = v
                    .iter()
                    .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect();
                Some(GrayImage::from_raw(w as u32, h as u32, px).ok_or_else(|| {
                    crate::Error::BadImage {
                        what: "Gated-SCNN edge map".into(),
                        reason: format!("{w} x {h} does not fit an image"),
                    }
                })?)
            }
            None => None,
        };
        Ok(GscnnPrediction { semantic, edge })
    }
}

impl Model for Gscnn {
    fn architecture(&self) -> &'static str {
        "Gscnn"
    }

    fn name(&self) -> &str {
        &self.config().name
    }

    fn device(&self) -> &Device {
        Gscnn::device(self)
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Semantic]
    }

    fn classes(&self) -> Vec<String> {
        let cfg = self.config();
        if cfg.meta.classes.len() == cfg.num_classes {
            cfg.meta.classes.clone()
        } else {
            (0..cfg.num_classes).map(|i| format!("class_{i}")).collect()
        }
    }

    fn palette(&self) -> Vec<[u8; 3]> {
        let cfg = self.config();
        if cfg.meta.palette.len() == cfg.num_classes {
            cfg.meta.palette.clone()
        } else {
            default_palette(&self.classes())
        }
    }

    /// `seg`, then with the shape stream `edge`, `alpha1`, `alpha2`, `alpha3`, `acts`.
    fn forward_named(&self, x: &Tensor, _task: Option<Task>) -> Result<Vec<(String, Tensor)>> {
        Ok(self.forward_t(x, None, false)?.named())
    }

    fn segment(
        &self,
        image: &DynamicImage,
        task: Task,
        _options: &PredictOptions,
    ) -> Result<Segmentation> {
        if task != Task::Semantic {
            return Err(unsupported(self, task));
        }
        Ok(Segmentation::Semantic(self.predict_image(image)?.semantic))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
