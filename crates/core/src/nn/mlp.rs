//! [`Mlp`]: the multi-layer perceptron of DETR-style heads (Mask2Former / OneFormer's
//! `MLP`, transformers' `*MLPPredictionHead`), one type for every key layout ([`MlpKeys`]).
//!
//! # Shapes
//! `... x in_dim` -> `... x out_dim`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::nn::{Mlp, MlpKeys};
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! // transformers' OneFormerMLPPredictionHead: `layers.{i}.0.{weight,bias}`.
//! let mlp = Mlp::new_with_keys(8, 16, 4, 3, MlpKeys::LayerBlocks, vb).unwrap();
//! let x = Tensor::zeros((2, 5, 8), DType::F32, &Device::Cpu).unwrap();
//! assert_eq!(mlp.forward(&x).unwrap().dims(), &[2, 5, 4]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// Where an [`Mlp`] finds its `Linear` layer `i` under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MlpKeys {
    /// `layers.{i}`: DETR / Mask2Former's `MLP` (a `ModuleList` of `Linear`s).
    #[default]
    Layers,
    /// `layers.{i}.0`: transformers' `OneFormerMLPPredictionHead` / `Mask2FormerMLPPredictionHead`
    /// (each `Linear` is slot 0 of a `PredictionBlock`).
    LayerBlocks,
}

/// A multi-layer perceptron of `Linear` layers with ReLU between layers and none after the
/// last; its key layout is an [`MlpKeys`].
///
/// # Shapes
/// `... x in_dim` -> `... x out_dim`.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<candle_nn::Linear>,
}

impl Mlp {
    /// `num_layers` linear layers `in_dim -> hidden_dim -> ... -> out_dim` at `layers.{i}`.
    pub fn new(
        in_dim: usize,
        hidden_dim: usize,
        out_dim: usize,
        num_layers: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Self::new_with_keys(in_dim, hidden_dim, out_dim, num_layers, MlpKeys::Layers, vb)
    }

    /// [`Mlp::new`] with the layers at the paths `keys` names.
    pub fn new_with_keys(
        in_dim: usize,
        hidden_dim: usize,
        out_dim: usize,
        num_layers: usize,
        keys: MlpKeys,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        if num_layers == 0 {
            return Err(Error::InvalidConfig("Mlp needs at least one layer".into()));
        }
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let din = if i == 0 { in_dim } else { hidden_dim };
            let dout = if i + 1 == num_layers {
                out_dim
            } else {
                hidden_dim
            };
            let lvb = match keys {
                MlpKeys::Layers => vb.pp("layers").pp(i),
                MlpKeys::LayerBlocks => vb.pp("layers").pp(i).pp(0),
            };
            layers.push(candle_nn::linear(din, dout, lvb)?);
        }
        Ok(Self { layers })
    }

    /// Applies the layers with ReLU in between.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = crate::ops::linear(&x, l.weight(), l.bias())?;
            if i + 1 < n {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// Weights of a 2-layer `3 -> 4 -> 2` MLP under `prefix.layers.{i}{suffix}`.
    fn weights(suffix: &str) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        for (i, (o, n)) in [(4, 3), (2, 4)].into_iter().enumerate() {
            let w = Tensor::ones((o, n), DType::F32, &dev).unwrap();
            let b = Tensor::full(-1f32, o, &dev).unwrap();
            m.insert(format!("head.layers.{i}{suffix}.weight"), w);
            m.insert(format!("head.layers.{i}{suffix}.bias"), b);
        }
        m
    }

    #[test]
    fn key_layouts() {
        let dev = Device::Cpu;
        let vb = |m| VarBuilder::from_tensors(m, DType::F32, &dev).pp("head");
        let x = Tensor::new(&[[1f32, 2.0, 3.0]], &dev).unwrap();
        // relu(6 - 1) = 5 per hidden unit, then 4 * 5 - 1 = 19.
        let flat = Mlp::new(3, 4, 2, 2, vb(weights(""))).unwrap();
        assert_eq!(
            flat.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
            [[19.0, 19.0]]
        );
        let blocks =
            Mlp::new_with_keys(3, 4, 2, 2, MlpKeys::LayerBlocks, vb(weights(".0"))).unwrap();
        assert_eq!(
            blocks.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
            [[19.0, 19.0]]
        );
        // Each layout reads only its own keys.
        assert!(Mlp::new(3, 4, 2, 2, vb(weights(".0"))).is_err());
        assert!(Mlp::new_with_keys(3, 4, 2, 2, MlpKeys::LayerBlocks, vb(weights(""))).is_err());
        assert!(Mlp::new(3, 4, 2, 0, vb(weights(""))).is_err());
    }
}
