//! A convolution followed by a training BatchNorm (and ReLU), `act(bn(conv2d(x, w)))`, as one
//! differentiable CPU op: mmcv's `ConvModule` in training, most of a ResNet's layers.
//!
//! As two candle ops, the convolution's output is a graph node: autograd keeps it until the
//! whole backward pass ends, and its gradient (the BatchNorm's input gradient) goes through
//! candle's accumulator (a zero-filled tensor plus an add, one more full-size buffer and three
//! more passes over it). Here the op holds the convolution's output itself and hands it back
//! as soon as its backward pass has run (the memory PyTorch frees at the same point; a second
//! backward pass over the same graph recomputes it), and the BatchNorm's input gradient goes
//! straight into the convolution's backward pass. Values and gradients are those of
//! [`super::conv2d`] followed by [`crate::ops::batch_norm_train`]: the same kernels in the same
//! order.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use candle_nn::BatchNorm;

use super::grad::conv_backward;
use super::{conv2d, Activation, Conv2dParams, Geometry};
use crate::ops::batch_norm::{update_running, BnOp};
use crate::ops::{batch_norm_train, cpu_operands, with_cpu_slices};
use crate::Result;

/// `act(batch_norm(conv2d(x, weight) + bias))` with batch statistics, updating `bn`'s running
/// statistics as [`batch_norm_train`] does.
///
/// On CPU (f32, no convolution bias, `act` none or ReLU, an affine norm) it is one op (see the
/// module docs); otherwise [`conv2d`] then [`batch_norm_train`].
///
/// # Shapes
/// `x`: `N x C x H x W`, `weight`: `O x C/groups x kh x kw` -> `N x O x H' x W'`
pub fn conv_bn_train(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
    p: Conv2dParams,
    act: Activation,
) -> Result<Tensor> {
    let g = Geometry::new(x, weight, bias, p)?;
    let wb = bn.weight_and_bias();
    let m = g.n * g.ho * g.wo;
    let fused = x.device().is_cpu()
        && weight.device().is_cpu()
        && x.dtype() == DType::F32
        && matches!(act, Activation::None | Activation::Relu)
        && wb.is_some_and(|(w, b)| w.dtype() == DType::F32 && b.dtype() == DType::F32)
        && bn.running_mean().elem_count() == g.o
        && bias.is_none()
        && g.c > 0
        && m >= 2;
    let Some((gamma, beta)) = wb.filter(|_| fused) else {
        let y = conv2d(x, weight, bias, p, Activation::None)?;
        return batch_norm_train(&y, bn, act);
    };
    crate::runtime::configure_cpu_threads();
    let relu = act == Activation::Relu;
    let norm = BnOp::new(g.n, g.o, g.ho * g.wo, bn.eps(), relu, false);
    let op = ConvBnOp {
        g,
        norm,
        conv_out: Mutex::new(None),
    };
    let stats = op.norm.stats_handle();
    let wb = Tensor::cat(&[gamma, beta], 0)?;
    let y = x.contiguous()?.apply_op3(&weight.contiguous()?, &wb, op)?;
    update_running(bn, &stats, m)?;
    Ok(y)
}

/// The fused op over `(x, w, [gamma; beta])`.
struct ConvBnOp {
    g: Geometry,
    norm: BnOp,
    /// The convolution's output from the forward pass, until the backward pass has used it.
    conv_out: Mutex<Option<Vec<f32>>>,
}

impl ConvBnOp {
    fn conv(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let simd = super::act::Simd::detect();
        super::run_kernel(x, w, None, None, &self.g, Activation::None, simd)
    }
}

impl CustomOp3 for ConvBnOp {
    fn name(&self) -> &'static str {
        "segkit-conv-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, w, wb] = cpu_operands([(s1, l1), (s2, l2), (s3, l3)], "segkit conv_bn_train")?;
        let z = self.conv(x, w);
        let (o, g) = (self.g.o, &self.g);
        let y = self.norm.forward_slices(&z, &wb[..o], &wb[o..], None)?;
        *self.conv_out.lock().map_err(|_| poisoned())? = Some(z);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        wb: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = self.norm.saved_stats()?;
        let saved = self.conv_out.lock().map_err(|_| poisoned())?.take();
        let z = match saved {
            Some(z) => z,
            // A second backward pass over the same graph: recompute the convolution.
            None => with_cpu_slices([x, w], "segkit conv_bn_train backward", |[xs, ws]| {
                Ok(self.conv(xs, ws))
            })?,
        };
        let o = self.g.o;
        let gamma = wb.detach().narrow(0, 0, o)?.to_vec1::<f32>()?;
        let (dz, _, dgamma, dbeta) =
            with_cpu_slices([dy, res], "segkit conv_bn_train", |[g, y]| {
                Ok(self.norm.backward_slices(&z, g, y, &gamma, &st))
            })?;
        drop(z);
        let g = &self.g;
        let dz = Tensor::from_vec(dz, (g.n, g.o, g.ho, g.wo), x.device())?;
        let (dx, dw) = conv_backward(x, w, &dz, g)?;
        let dwb: Vec<f32> = dgamma.into_iter().chain(dbeta).map(|v| v as f32).collect();
        Ok((dx, dw, Some(Tensor::from_vec(dwb, 2 * o, x.device())?)))
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("conv_bn_train: poisoned state".into())
}
