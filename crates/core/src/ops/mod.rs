//! Tensor ops that candle lacks or that segkit needs faster, with PyTorch semantics.
//!
//! Every op works on any device: CPU gets a dedicated kernel (rayon, contiguous buffers), other
//! devices fall back to composed candle ops.

use candle_core::Tensor;

mod conv;

pub(crate) use conv::conv2d_affine_cpu;
pub use conv::{
    activate, conv2d, conv2d_cat, conv_bn_train, cpu_has_avx512f, Activation, Conv2dParams,
};
mod pool2d;

pub use pool2d::{avg_pool2d, max_pool2d, pool_output_len};
mod boxes;
pub mod detection;
mod grid_sample;
mod group_norm;
mod pool;
mod resize;
mod resize_op;
mod transpose;
pub(crate) use resize::with_cpu_f32;
mod roi_align;

pub use boxes::{batched_nms, box_area, box_iou, default_bbox_xform_clip, nms, BoxCoder};
pub use grid_sample::{grid_sample, GridSampleMode, GridSamplePadding};
pub use group_norm::group_norm;
pub use pool::adaptive_avg_pool2d;
pub use resize::{resize_bilinear, resize_nearest};
pub use resize_op::resize_bilinear_cat;
pub use roi_align::roi_align;
pub use transpose::transpose_last2;

// Composed-tensor-op paths of the ops above, public for the parity tests.
#[doc(hidden)]
pub use boxes::box_iou_fallback;
#[doc(hidden)]
pub use grid_sample::grid_sample_fallback;
#[doc(hidden)]
pub use pool::adaptive_avg_pool2d_fallback;
#[doc(hidden)]
pub use resize::{resize_bilinear_fallback, resize_bilinear_matmul, resize_nearest_fallback};
#[doc(hidden)]
pub use roi_align::{roi_align_cpu, roi_align_fallback};
mod dropout;
mod eltwise;

pub use dropout::dropout2d;

pub use eltwise::{add_act, add_act_in_place, quick_gelu};
mod batch_norm;

pub use batch_norm::{batch_norm_add_train, batch_norm_train};
mod attention;
pub mod fastmath;
mod layer_norm;
mod linear;
mod linear_epilogue;
mod mlp;
#[doc(hidden)]
pub use attention::attention_fallback;
pub use attention::{attention, AttentionOptions};
pub use linear::{linear, linear_act, linear_residual};
mod log_softmax;
pub(crate) use layer_norm::{layer_norm_rows, layer_norm_train};
pub(crate) use mlp::{norm_feed_forward_rows, FeedForward};

pub use log_softmax::log_softmax_gather;
mod resized_log_softmax;
pub use resized_log_softmax::resized_log_softmax_gather;

/// The f32 elements of a contiguous CPU operand of the custom op named `op` (the CPU kernels
/// of segkit's differentiable ops take contiguous inputs only).
pub(crate) fn cpu_operand<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: non-contiguous operand"),
    }
}

/// [`cpu_operand`] of each `(storage, layout)` of a custom op's forward pass.
pub(crate) fn cpu_operands<'a, const N: usize>(
    ops: [(&'a candle_core::CpuStorage, &candle_core::Layout); N],
    op: &str,
) -> candle_core::Result<[&'a [f32]; N]> {
    let mut out: [&[f32]; N] = [&[]; N];
    for (o, (s, l)) in out.iter_mut().zip(ops) {
        *o = cpu_operand(s, l, op)?;
    }
    Ok(out)
}

/// The f32 elements of CPU f32 tensors (detached, made contiguous), passed to `f`: the
/// backward passes of segkit's custom ops (and segkit-train's optimizer kernels) read their
/// tensors through it without copying them (a non-contiguous one is copied once). Another
/// device or dtype is an error naming `op`.
pub fn with_cpu_slices<const N: usize, R>(
    ts: [&Tensor; N],
    op: &str,
    f: impl FnOnce([&[f32]; N]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let mut owned = Vec::with_capacity(N);
    for t in ts {
        owned.push(t.detach().contiguous()?);
    }
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (s, (storage, layout)) in slices.iter_mut().zip(&guards) {
        match &**storage {
            candle_core::Storage::Cpu(cpu) => *s = cpu_operand(cpu, layout, op)?,
            _ => candle_core::bail!("{op}: CPU tensors only"),
        }
    }
    f(slices)
}
