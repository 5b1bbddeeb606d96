//! Evaluating trained weights of any model family the [`crate::Trainer`] trains (`segkit
//! eval`): the model is built from the training config as training builds it, the weights
//! file is read with the model's own loader (every variable required, shapes checked), and
//! the model's own evaluation runs on the chosen split — mIoU for segmentors, top-1 for
//! classifiers, boundary F for Gated-SCNN, PQ / AP / mIoU for OneFormer, mask AP for PANet.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::config::TrainConfig;
use crate::data::{open_dataset, Limited, Split};
use crate::eval::EvalResult;
use crate::task::{build_model, internal};
use crate::TrainResult;

/// Evaluates `weights` (a file the model's loader reads: segkit's `model.safetensors`, or a
/// checkpoint in the family's own layout) with the model `cfg` describes, on `split` of
/// `cfg.dataset` (its first `limit` images when given), `batch_size` images at a time.
///
/// A missing key or a tensor of another shape is a typed checkpoint error naming the model,
/// the file and the key.
pub fn evaluate_weights(
    cfg: &TrainConfig,
    weights: &Path,
    split: Split<'_>,
    limit: Option<usize>,
    batch_size: usize,
) -> TrainResult<EvalResult> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = build_model(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let shapes: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .map_err(|_| internal("varmap"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let in_ck = |e: segkit_core::Error| segkit_models::Error::checkpoint(model.name(), weights, e);
    let sd = model.load_state_dict(weights)?;
    let mut loaded: HashMap<String, Tensor> = HashMap::with_capacity(shapes.len());
    for (name, dims) in shapes {
        let t = sd.require(&name).map_err(in_ck)?;
        if t.dims() != dims.as_slice() {
            Err(in_ck(segkit_core::Error::shape(
                name.as_str(),
                &dims[..],
                t.dims(),
            )))?;
        }
        loaded.insert(name, t.to_dtype(DType::F32)?);
    }
    let mut dataset = open_dataset(&cfg.dataset, split, model.meta())?;
    if let Some(n) = limit {
        dataset = Box::new(Limited::new(dataset, n));
    }
    model.evaluate(loaded, dataset.as_ref(), batch_size.max(1))
}
