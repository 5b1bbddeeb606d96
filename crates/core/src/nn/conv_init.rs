//! How a `ConvNormAct` starts when a `VarMap` creates its parameters.

/// How a [`ConvNormAct`](super::ConvNormAct)'s parameters start when the `VarBuilder` creates them (see
/// [`crate::init`]).
#[derive(Debug, Clone, Copy)]
pub struct ConvInit {
    /// The conv weight's initialisation.
    pub weight: crate::init::Init,
    /// The conv bias: zero (mmcv), or PyTorch's default U(+-1/sqrt(fan_in)).
    pub torch_default_bias: bool,
    /// The norm's weight starts at 0 instead of 1 (`zero_init_residual`).
    pub zero_norm: bool,
}

impl ConvInit {
    /// mmcv `ConvModule`'s (and torchvision's ResNet convs'): Kaiming normal `fan_out`, bias
    /// 0, norm weight 1 and bias 0.
    pub const MMCV: ConvInit = ConvInit {
        weight: crate::init::KAIMING_FAN_OUT,
        torch_default_bias: false,
        zero_norm: false,
    };

    /// The same with the norm's weight 0: the last norm of a residual block under mmseg's /
    /// timm's `zero_init_residual`.
    pub const fn zero_norm(mut self) -> Self {
        self.zero_norm = true;
        self
    }

    /// The bias hint for a conv of fan-in `fan_in`.
    pub(crate) fn bias(&self, fan_in: usize) -> crate::init::Init {
        if self.torch_default_bias {
            crate::init::torch_default_bias(fan_in)
        } else {
            crate::init::ZERO
        }
    }
}
