//! [`EncoderDecoder`] as a [`Model`]: semantic segmentation through mmseg's test pipeline.

use std::any::Any;

use candle_core::{Device, Tensor};
use image::DynamicImage;

use super::EncoderDecoder;
use crate::segment::{default_palette, unsupported, Model, Segmentation, SemanticResult, Task};
use crate::{PredictOptions, Result};

impl Model for EncoderDecoder {
    fn architecture(&self) -> &'static str {
        "EncoderDecoder"
    }

    fn name(&self) -> &str {
        &self.config().name
    }

    fn device(&self) -> &Device {
        EncoderDecoder::device(self)
    }

    fn tasks(&self) -> &'static [Task] {
        &[Task::Semantic]
    }

    fn classes(&self) -> Vec<String> {
        let cfg = self.config();
        let n = cfg.num_classes();
        if cfg.meta.classes.len() == n {
            cfg.meta.classes.clone()
        } else {
            (0..n).map(|i| format!("class_{i}")).collect()
        }
    }

    fn palette(&self) -> Vec<[u8; 3]> {
        let cfg = self.config();
        if cfg.meta.palette.len() == cfg.num_classes() {
            cfg.meta.palette.clone()
        } else {
            default_palette(&self.classes())
        }
    }

    fn forward_named(&self, x: &Tensor, _task: Option<Task>) -> Result<Vec<(String, Tensor)>> {
        let o = self.forward_t(x, false)?;
        Ok(o.named()
            .into_iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect())
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
        Ok(Segmentation::Semantic(SemanticResult::from_prediction(
            &self.predict_image(image)?,
            self.classes(),
            self.palette(),
        )?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
