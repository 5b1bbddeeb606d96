//! [`Gscnn`] as a [`Model`]: semantic segmentation at the image's size (the official
//! single-scale evaluation), every output by name for `segkit dump`.

use std::any::Any;

use candle_core::{Device, Tensor};
use image::DynamicImage;

use super::Gscnn;
use crate::segment::{default_palette, unsupported, Model, Segmentation, SemanticResult, Task};
use crate::{PredictOptions, Result};

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
        let rgb = crate::image::to_rgb8(image)?;
        let x = self.image_tensor(&rgb)?;
        let seg = self.forward_t(&x, None, false)?.seg;
        let ids = seg.argmax(1)?; // over the classes: 1 x H x W
        let (h, w) = (rgb.height() as usize, rgb.width() as usize);
        let class_map: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        Ok(Segmentation::Semantic(SemanticResult::new(
            h,
            w,
            class_map,
            self.classes(),
            self.palette(),
        )?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
