//! [`GscnnTask`]: Gated-SCNN as a [`TrainModel`] — the four losses with the edge ground truth
//! made from each batch's labels and the Gumbel noise drawn from the run's saved stream,
//! evaluation with mIoU and the boundary F-score.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_core::checkpoint::StateDict;
use segkit_data::metrics::{BoundaryFScore, BoundaryTolerance, SegMetric};
use segkit_data::{Sample, SegDataset};
use segkit_models::gscnn::Gscnn;
use segkit_models::{DataPreprocessorConfig, DatasetMeta, ModelConfig};

use super::{gscnn_losses, preprocessor, GscnnTraining};
use crate::data::Batch;
use crate::eval::EvalResult;
use crate::losses::NamedLosses;
use crate::task::TrainModel;
use crate::TrainResult;

/// A Gated-SCNN being trained (see [`super`]).
pub struct GscnnTask {
    spec: GscnnTraining,
    net: Gscnn,
    pre: DataPreprocessorConfig,
    names: Vec<String>,
}

impl std::fmt::Debug for GscnnTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GscnnTask")
            .field("name", &self.spec.net.name)
            .finish_non_exhaustive()
    }
}

/// The name under which a boundary F-score enters [`EvalResult::extra`]: `bF_1px` for a pixel
/// tolerance, `bF_0.00375` for a fraction of the diagonal.
pub fn boundary_key(t: &BoundaryTolerance) -> String {
    match t {
        BoundaryTolerance::Pixels(p) => format!("bF_{p}px"),
        BoundaryTolerance::DiagonalFraction(f) => format!("bF_{f}"),
    }
}

impl GscnnTask {
    /// Builds the network of `spec` with its variables in `vb`.
    pub fn new(spec: GscnnTraining, vb: VarBuilder<'_>) -> TrainResult<Self> {
        let net = Gscnn::new(&spec.net, vb)?;
        let names: &[&str] = if spec.net.shape_stream {
            &["seg_loss", "edge_loss", "att_loss", "dual_loss"]
        } else {
            &["seg_loss"]
        };
        Ok(Self {
            pre: preprocessor(&spec.net),
            names: names.iter().map(|s| s.to_string()).collect(),
            spec,
            net,
        })
    }

    /// The resolved setup (network, losses, edge ground truth, tolerances).
    pub fn training(&self) -> &GscnnTraining {
        &self.spec
    }
}

impl TrainModel for GscnnTask {
    fn name(&self) -> &str {
        &self.spec.net.name
    }

    fn model_config(&self) -> ModelConfig {
        ModelConfig::Gscnn(Box::new(self.spec.net.clone()))
    }

    fn config_json(&self) -> TrainResult<String> {
        let v = serde_json::json!({
            "net": self.spec.net,
            "loss": self.spec.loss,
            "edge_target": self.spec.edge_target,
        });
        crate::checkpoint::to_json(&v)
    }

    fn num_classes(&self) -> usize {
        self.spec.net.num_classes
    }

    fn meta(&self) -> &DatasetMeta {
        &self.spec.net.meta
    }

    fn preprocessor(&self) -> &DataPreprocessorConfig {
        &self.pre
    }

    fn loss_names(&self) -> &[String] {
        &self.names
    }

    fn load_state_dict(&self, path: &std::path::Path) -> TrainResult<StateDict> {
        Ok(segkit_models::gscnn::load_state_dict(
            path,
            &self.spec.net.name,
        )?)
    }

    fn losses(&self, batch: &Batch, _ignore: u16, rng: &mut u64) -> TrainResult<NamedLosses> {
        // One stream for dropout and the dual-task loss's Gumbel `U`, in that order.
        let prev = segkit_core::random::thread_state();
        segkit_core::random::set_thread_state(Some(*rng));
        let drawn = self
            .net
            .forward_t(&batch.images, None, true)
            .map_err(crate::TrainError::from)
            .and_then(|out| {
                let u = segkit_core::random::uniform(out.seg.dims(), batch.images.device())?;
                Ok((out, u))
            });
        *rng = segkit_core::random::thread_state().unwrap_or(0);
        segkit_core::random::set_thread_state(prev);
        let (out, u) = drawn?;
        gscnn_losses(
            &out.seg,
            out.edge.as_ref(),
            &batch.labels,
            &self.spec.loss,
            &self.spec.edge_target,
            Some(&u),
        )
    }

    fn evaluate(
        &self,
        weights: HashMap<String, Tensor>,
        dataset: &dyn SegDataset,
        batch_size: usize,
    ) -> TrainResult<EvalResult> {
        let net = Gscnn::new(
            &self.spec.net,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        evaluate_gscnn(&net, dataset, batch_size, &self.spec.boundary_tolerances)
    }

    fn activation_bytes_per_pixel(&self) -> u64 {
        activation_bytes_per_pixel(&self.spec.net)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Peak bytes of a Gated-SCNN training step per input pixel of one sample: the regular
/// stream's figure (segkit-train's ResNet figures of [`crate::memory`], scaled by width;
/// WRN38 above every measured one), plus the shape stream's (it runs at full input
/// resolution: three gated convolutions, the fusion with the Canny map, the edge output and
/// the edge losses' maps; a ResNet's width does not scale it), plus the class maps' (per
/// class: logits, softmax and, with the shape stream, the attention and dual-task losses'
/// maps and the Gumbel softmax).
///
/// Measured with `gscnn::tests::gscnn_peak_memory_of_training_steps` (`VmHWM` after two
/// steps, batch 2, AdamW, f32, CPU, square inputs; KiB):
///
/// | model (classes, parameters) | 64 | 96 | 128 | 160 | slope per sample pixel |
/// |---|---|---|---|---|---|
/// | demo network, shape stream (11, 886,578) | | 177,536 | | 437,240 | 7.9 KiB |
/// | demo network, no shape stream (11, 852,600) | | 47,792 | | 81,668 | 1.0 KiB |
/// | `gscnn_r101-d8_cityscapes` (19, 60,739,946) | 1,292,856 | 1,473,172 | 1,737,704 | | 17.6 / 18.5 KiB |
///
/// The estimate ([`crate::memory::estimate_bytes`] with this figure) is 1.45 to 2.2 times
/// these peaks (`gscnn::tests::memory_estimates_cover_the_measured_peaks`). WRN38 was not
/// measured (its 137 M parameters train in more memory than this machine's helpers share).
pub fn activation_bytes_per_pixel(cfg: &segkit_models::GscnnConfig) -> u64 {
    let regular = match cfg.resnet() {
        Ok(Some(r)) => {
            let base: u64 = match r.depth {
                d if d <= 18 => 8_000,
                d if d <= 34 => 13_000,
                d if d <= 50 => 26_000,
                _ => 40_000,
            };
            base.saturating_mul(r.base_channels as u64) / 64
        }
        _ => WRN38,
    };
    let (shape, per_class) = if cfg.shape_stream {
        (SHAPE_STREAM, CLASS_MAP_BYTES_SHAPE)
    } else {
        (0, CLASS_MAP_BYTES)
    };
    regular + shape + per_class * cfg.num_classes as u64
}

/// WideResNet38 at output stride 8 (not measured: 2.5 times the dilated ResNet-101's).
const WRN38: u64 = 100_000;
/// The shape stream at the official widths (32 / 16 / 8) with its edge output and losses
/// (the demo network's slope with it less without it: 7.9 - 1.0 KiB).
const SHAPE_STREAM: u64 = 7_000;
/// Per class without the shape stream: logits, softmax, the loss's gradient.
const CLASS_MAP_BYTES: u64 = 40;
/// Per class with the shape stream: also the attention loss, the Gumbel softmax and the
/// dual-task loss's maps.
const CLASS_MAP_BYTES_SHAPE: u64 = 120;

/// mIoU (mmseg `IoUMetric`) and boundary F-scores of `net` on `val`, batches of up to `bs`
/// consecutive images of one size, whole images.
pub(crate) fn evaluate_gscnn(
    net: &Gscnn,
    val: &dyn SegDataset,
    bs: usize,
    tolerances: &[BoundaryTolerance],
) -> TrainResult<EvalResult> {
    let info = val.info();
    let k = net.config().num_classes;
    let ignore = i64::from(info.ignore_index);
    let n = val.len();
    if n == 0 || bs == 0 {
        return Err(segkit_data::Error::InvalidArgument(
            "nothing to evaluate: no images or a batch size of 0 (the mIoU of no images is \
             undefined)"
                .into(),
        )
        .into());
    }
    let mut metric = SegMetric::new(k, ignore)?;
    let mut bf: Vec<BoundaryFScore> = tolerances
        .iter()
        .map(|&t| BoundaryFScore::new(k, ignore, t))
        .collect();
    let pre = preprocessor(net.config());
    let mut i = 0;
    while i < n {
        let first = val.get(i)?;
        let (h, w) = (first.height, first.width);
        let mut samples: Vec<Sample> = vec![first];
        while samples.len() < bs && i + samples.len() < n {
            let s = val.get(i + samples.len())?;
            if (s.height, s.width) != (h, w) {
                break;
            }
            samples.push(s);
        }
        i += samples.len();
        let items = samples
            .iter()
            .map(|s| segkit_data::augment::Augmented::new(s.clone()))
            .collect::<segkit_data::Result<Vec<_>>>()?;
        let batch = crate::data::collate(&items, &pre, None, info.ignore_index, &Device::Cpu)?;
        let pred: Vec<u32> = net
            .forward_t(&batch.images, None, false)?
            .seg
            .argmax(1)?
            .flatten_all()?
            .to_vec1()?;
        for (s, p) in samples.iter().zip(pred.chunks(h * w)) {
            let gt = s
                .semantic
                .as_ref()
                .ok_or_else(|| segkit_data::Error::BadFile {
                    path: s.path.clone(),
                    reason: "sample has no semantic ground truth".into(),
                })?;
            metric.update(p, gt)?;
            for m in &mut bf {
                m.update(p, gt, h, w)?;
            }
        }
    }
    let r = metric.compute();
    let opt = |v: f64| (!v.is_nan()).then_some(v);
    let extra: BTreeMap<String, f64> = tolerances
        .iter()
        .zip(&bf)
        .map(|(t, m)| (boundary_key(t), m.compute().mean))
        .collect();
    Ok(EvalResult {
        num_images: n,
        aacc: r.aacc,
        miou: r.miou,
        macc: r.macc,
        classes: if info.classes.len() == k {
            info.classes.clone()
        } else {
            (0..k).map(|c| c.to_string()).collect()
        },
        iou: r.iou.iter().copied().map(opt).collect(),
        acc: r.acc.iter().copied().map(opt).collect(),
        extra,
    })
}
