//! [`SegmentorTask`]: an mmseg encoder-decoder segmentor as a [`TrainModel`] — the training
//! forward pass (`forward_t(x, true)`: batch statistics, running-statistics updates,
//! dropout), every configured loss of every named head output ([`LossPlan`]), evaluation by
//! [`crate::evaluate`].

use std::any::Any;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_data::SegDataset;
use segkit_models::{
    BackboneConfig, DataPreprocessorConfig, DatasetMeta, EncoderDecoder, ModelConfig,
    SegmentorConfig,
};

use crate::data::Batch;
use crate::eval::{evaluate, EvalResult};
use crate::losses::{LossPlan, NamedLosses};
use crate::task::TrainModel;
use crate::TrainResult;

/// An encoder-decoder segmentor being trained.
pub struct SegmentorTask {
    cfg: SegmentorConfig,
    model: EncoderDecoder,
    losses: LossPlan,
}

impl std::fmt::Debug for SegmentorTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentorTask")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

impl SegmentorTask {
    /// Builds the segmentor `cfg` with its variables in `vb`; `aux_loss_weight` replaces
    /// every auxiliary-head loss weight (the training config's field).
    pub fn new(
        cfg: SegmentorConfig,
        aux_loss_weight: Option<f64>,
        vb: VarBuilder<'_>,
    ) -> TrainResult<Self> {
        let losses = LossPlan::new(&cfg, aux_loss_weight)?;
        let model = EncoderDecoder::new(&cfg, vb)?;
        Ok(Self { cfg, model, losses })
    }

    /// The segmentor config.
    pub fn config(&self) -> &SegmentorConfig {
        &self.cfg
    }

    /// The losses it trains with.
    pub fn loss_plan(&self) -> &LossPlan {
        &self.losses
    }

    /// The model whose variables are trained.
    pub fn model(&self) -> &EncoderDecoder {
        &self.model
    }
}

impl TrainModel for SegmentorTask {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn model_config(&self) -> ModelConfig {
        ModelConfig::from(self.cfg.clone())
    }

    fn config_json(&self) -> TrainResult<String> {
        crate::checkpoint::to_json(&self.cfg)
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes()
    }

    fn meta(&self) -> &DatasetMeta {
        &self.cfg.meta
    }

    fn preprocessor(&self) -> &DataPreprocessorConfig {
        &self.cfg.data_preprocessor
    }

    fn loss_names(&self) -> &[String] {
        self.losses.names()
    }

    fn init_value(&self, name: &str, dims: &[usize], seed: u64) -> TrainResult<Tensor> {
        // The last BatchNorm of each residual block (`zero_init_residual`); none elsewhere.
        let zero_gamma = match &self.cfg.backbone {
            BackboneConfig::ResNet(r) => match r.layout() {
                Ok((_, true)) => Some(".bn3.weight"),
                _ => Some(".bn2.weight"),
            },
            _ => None,
        };
        crate::init::init_value(name, dims, seed, zero_gamma)
    }

    fn losses(&self, batch: &Batch, ignore_index: u16, rng: &mut u64) -> TrainResult<NamedLosses> {
        let out = segkit_core::random::with_thread_state(rng, || {
            self.model.forward_t(&batch.images, true)
        });
        self.losses
            .compute(&out?, &batch.labels, i64::from(ignore_index))
    }

    fn evaluate(
        &self,
        weights: HashMap<String, Tensor>,
        dataset: &dyn SegDataset,
        batch_size: usize,
    ) -> TrainResult<EvalResult> {
        let model = EncoderDecoder::new(
            &self.cfg,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        evaluate(&model, dataset, batch_size, |_, _| {})
    }

    fn activation_bytes_per_pixel(&self) -> u64 {
        crate::memory::activation_bytes_per_pixel(&self.cfg)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
