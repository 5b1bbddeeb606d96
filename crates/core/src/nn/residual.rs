//! [`ConvNormAct::forward_add_act`]: a residual block's last conv + norm, shortcut add and
//! activation.

use candle_core::Tensor;

use super::{ConvNormAct, NormLayer};
use crate::ops::{self, Activation};
use crate::Result;

impl ConvNormAct {
    /// `act(norm(conv(x)) + residual)`: a residual block's last conv, its shortcut add and
    /// activation (this block's own activation is not applied). Training with BatchNorm runs
    /// the norm, the add and the activation as one op ([`ops::batch_norm_add_train`]), so the
    /// graph keeps neither the normalised map nor the sum; inference folds the norm into the
    /// conv and adds the shortcut and activation into the conv's output buffer (no new
    /// allocation).
    pub fn forward_add_act(
        &self,
        x: &Tensor,
        residual: &Tensor,
        act: Activation,
        train: bool,
    ) -> Result<Tensor> {
        match (&self.norm, train) {
            (Some(NormLayer::Batch { bn, .. }), true) => {
                let p = self.cfg.params();
                let y = ops::conv2d(x, &self.weight, self.bias.as_ref(), p, Activation::None)?;
                ops::batch_norm_add_train(&y, bn, residual, act)
            }
            _ => {
                // `y` is this conv's fresh output, held by nothing else: the sum goes into it.
                let y = self.forward_act(x, train, Activation::None)?;
                ops::add_act_in_place(y, residual, act)
            }
        }
    }
}
