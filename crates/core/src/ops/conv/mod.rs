//! 2-D convolution with a fused bias and activation.
//!
//! On CPU with f32 tensors, [`conv2d`] runs segkit's own kernels (rayon over blocks of the
//! output, NCHW in and out, no transposes, the output `Vec` handed to the tensor without a
//! copy):
//! - on x86-64 with AVX2 + FMA, a packed GEMM (`kernel`: weights packed once per call, a 6 x 16
//!   register-tile microkernel) driven two ways:
//!   - `winograd`: 3x3 stride-1 convs (any padding / dilation) as Winograd F(2x2, 3x3), 2.25x
//!     fewer multiplications, the transforms writing straight into the GEMM's packed layout;
//!   - `dilated`: 3x3 stride-1 convs at rates whose outer taps mostly read the padding (ASPP's
//!     24 and 36 on a 64 x 64 map), as one GEMM per tap over the rectangles where it reads the
//!     input, the padded taps skipped;
//!   - `im2col`: every other conv (1x1 stride 1 included); the im2col matrix is never
//!     materialised, each task packs the block of it that it needs straight from the input;
//! - elsewhere, `gemm_conv`: im2col in bounded tiles plus the `gemm` crate;
//! - depthwise convs (`groups == C`): a direct kernel, parallel over channel planes
//!   (`depthwise`);
//! - bias and activation fused into the pass that finishes each output block (`act`, whose
//!   sigmoid and GELU are vectorised approximations within a few ulp).
//!
//! Buffers that tasks reuse (packed input blocks, Winograd scratch, padded planes) live in a
//! thread-local scratch vector of at most a few MiB per thread. Other devices and dtypes use
//! candle's `conv2d` followed by broadcast bias and activation ops.
//!
//! Training: when the input, the weight or the bias records gradients
//! ([`Tensor::track_op`]), the convolution is a candle custom op whose forward *and* backward
//! passes run on these kernels (`grad`: the input gradient as a stride-1 convolution of the
//! zero-upsampled output gradient with the flipped kernel, the weight gradient as per-image
//! im2col GEMMs summed in a fixed order; for 3x3 stride-1 convs with at least 1024 input
//! channels as Winograd's transposed algorithm, `winograd_grad`; for other stride-1 kernels
//! larger than 1x1 on AVX2 + FMA as an implicit GEMM over zero-padded planes, `wgrad_direct`),
//! followed by candle's broadcast bias add and
//! activation, which have their own backward passes. Off the CPU or for other dtypes the
//! tracked path is candle's `conv2d` (whose backward candle provides).

mod act;
mod bn;
mod cat;
mod depthwise;
mod dilated;
mod gemm_conv;
mod grad;
mod im2col;
mod kernel;
#[cfg(target_arch = "x86_64")]
mod rows_a;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod wgrad_direct;
mod winograd;
mod winograd_grad;

use candle_core::{DType, Device, Storage, Tensor};

use crate::{Error, Result};
pub(crate) use act::bias_act;
pub use act::cpu_has_avx512f;
use act::Simd;
pub use bn::conv_bn_train;

/// Activation applied after a convolution or norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// Logistic sigmoid.
    Sigmoid,
    /// GELU (erf form, PyTorch's default).
    Gelu,
}

/// Stride, padding, dilation and groups of a square 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride in both dimensions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Dilation in both dimensions.
    pub dilation: usize,
    /// Channel groups.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// Applies `act` to `x`.
///
/// Contiguous f32 CPU tensors use a vectorised, multi-threaded kernel (sigmoid and GELU within
/// a few ulp of the exact functions); anything else uses candle's ops.
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::None {
        return Ok(x.clone());
    }
    // The fused kernel has no backward pass: tracked tensors take candle's ops.
    if !x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
        let y = with_cpu_f32(x, |xs| act::act_vec(xs, act))?;
        return Ok(Tensor::from_vec(y, x.shape(), &Device::Cpu)?);
    }
    Ok(match act {
        Activation::None => x.clone(),
        Activation::Relu => x.relu()?,
        Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Activation::Gelu => x.gelu_erf()?,
    })
}

/// Shapes and hyper-parameters of one convolution, validated.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
}

impl Geometry {
    /// Checks every shape and parameter the way PyTorch does, so that no kernel (ours or
    /// candle's) sees an input it could panic on.
    fn new(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Self> {
        let &[n, c, h, w] = x.dims() else {
            return Err(Error::InvalidArgument(format!(
                "conv2d input must be N x C x H x W, got shape {:?}",
                x.dims()
            )));
        };
        let &[o, cg, kh, kw] = weight.dims() else {
            return Err(Error::InvalidArgument(format!(
                "conv2d weight must be O x C/groups x kh x kw, got shape {:?}",
                weight.dims()
            )));
        };
        if p.stride == 0 || p.dilation == 0 || p.groups == 0 {
            return Err(Error::InvalidArgument(format!(
                "conv2d stride, dilation and groups must be positive, got {p:?}"
            )));
        }
        if c % p.groups != 0 || o % p.groups != 0 {
            return Err(Error::InvalidArgument(format!(
                "conv2d groups ({}) must divide the input ({c}) and output ({o}) channels",
                p.groups
            )));
        }
        if cg * p.groups != c {
            return Err(Error::shape(
                "conv2d weight",
                &[o, c / p.groups, kh, kw],
                weight.dims(),
            ));
        }
        if let Some(b) = bias {
            if b.dims() != [o] {
                return Err(Error::shape("conv2d bias", &[o], b.dims()));
            }
        }
        if x.dtype() != weight.dtype() || bias.is_some_and(|b| b.dtype() != x.dtype()) {
            return Err(Error::InvalidArgument(format!(
                "conv2d dtypes differ: input {:?}, weight {:?}, bias {:?}",
                x.dtype(),
                weight.dtype(),
                bias.map(|b| b.dtype())
            )));
        }
        let out_len = |len: usize, k: usize| {
            let span = p.dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let padded = len.checked_add(p.padding.checked_mul(2)?)?;
            Some(padded.checked_sub(span)? / p.stride + 1)
        };
        let (Some(ho), Some(wo)) = (out_len(h, kh), out_len(w, kw)) else {
            return Err(Error::InvalidArgument(format!(
                "conv2d kernel {kh}x{kw} (dilation {}) is larger than the padded input \
                 {h}x{w} (padding {})",
                p.dilation, p.padding
            )));
        };
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            ho,
            wo,
            stride: p.stride,
            padding: p.padding,
            dilation: p.dilation,
            groups: p.groups,
        })
    }
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::InvalidArgument("expected a CPU tensor".into()));
    };
    let data = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    let data = data
        .get(start..start + t.elem_count())
        .ok_or_else(|| Error::InvalidArgument("tensor storage shorter than its layout".into()))?;
    Ok(f(data))
}

/// `act(conv2d(x, weight) + bias)` as PyTorch's `F.conv2d` followed by the activation.
///
/// CPU f32 tensors take segkit's fused kernels (see the module docs); other devices and dtypes
/// use candle's ops. Invalid shapes or parameters give an error, never a panic.
///
/// # Shapes
/// `x`: `N x C x H x W`, `weight`: `O x C/groups x kh x kw`, `bias`: `O` -> `N x O x H' x W'`
/// with `H' = (H + 2 * padding - dilation * (kh - 1) - 1) / stride + 1` (likewise `W'`).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    act: Activation,
) -> Result<Tensor> {
    let g = Geometry::new(x, weight, bias, p)?;
    let on_cpu =
        x.device().is_cpu() && weight.device().is_cpu() && bias.is_none_or(|b| b.device().is_cpu());
    let out_shape = (g.n, g.o, g.ho, g.wo);
    let tracked = x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op);
    let y = if tracked && g.n * g.o * g.ho * g.wo > 0 && g.c > 0 {
        if on_cpu && x.dtype() == DType::F32 {
            x.contiguous()?
                .apply_op2(&weight.contiguous()?, grad::Conv2dOp { g })?
        } else {
            x.conv2d(weight, p.padding, p.stride, p.dilation, p.groups)?
        }
    } else if g.n * g.o * g.ho * g.wo == 0 || g.c == 0 {
        // Nothing to convolve (empty output, or an empty sum): the kernels never see this.
        Tensor::zeros(out_shape, x.dtype(), x.device())?
    } else if on_cpu && x.dtype() == DType::F32 {
        return conv2d_cpu_f32(x, weight, bias, &g, act);
    } else {
        x.conv2d(weight, p.padding, p.stride, p.dilation, p.groups)?
    };
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    };
    activate(&y, act)
}

/// `act(conv2d(cat([a, b], 1), weight) + bias)`: a convolution over the channel
/// concatenation of `a` and `b`, equal to concatenating and calling [`conv2d`].
///
/// When gradients are recorded on CPU (f32, groups 1) it is one differentiable op that keeps
/// `a` and `b` rather than the concatenated map (see `conv/cat.rs`: PSPNet's bottleneck saves
/// its 4096-channel input this way); otherwise it concatenates and calls [`conv2d`].
///
/// # Shapes
/// `a`: `N x Ca x H x W`, `b`: `N x Cb x H x W`, `weight`: `O x (Ca + Cb)/groups x kh x kw`,
/// `bias`: `O` -> `N x O x H' x W'`
pub fn conv2d_cat(
    a: &Tensor,
    b: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    act: Activation,
) -> Result<Tensor> {
    let (da, db) = (a.dims(), b.dims());
    if da.len() != 4 || db.len() != 4 || da[0] != db[0] || da[2..] != db[2..] {
        return Err(Error::InvalidArgument(format!(
            "conv2d_cat: the maps must be N x C x H x W with the same N, H and W, got shapes \
             {da:?} and {db:?}"
        )));
    }
    let tracked = a.track_op() || b.track_op() || weight.track_op();
    let cpu_f32 = [a, b, weight]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if !(tracked && cpu_f32 && p.groups == 1) {
        return conv2d(&Tensor::cat(&[a, b], 1)?, weight, bias, p, act);
    }
    // The geometry of the concatenation, checked as conv2d checks it (on a zero-size stand-in).
    let stand_in = Tensor::zeros((0, da[1] + db[1], da[2], da[3]), DType::F32, a.device())?;
    let mut g = Geometry::new(&stand_in, weight, bias, p)?;
    g.n = da[0];
    if g.n * g.o * g.ho * g.wo == 0 || da[1] == 0 || db[1] == 0 {
        return conv2d(&Tensor::cat(&[a, b], 1)?, weight, bias, p, act);
    }
    let op = cat::Conv2dCatOp { g, ca: da[1] };
    let y = a
        .contiguous()?
        .apply_op3(&b.contiguous()?, &weight.contiguous()?, op)?;
    let y = match bias {
        Some(bv) => y.broadcast_add(&bv.reshape((1, bv.elem_count(), 1, 1))?)?,
        None => y,
    };
    activate(&y, act)
}

/// Picks the kernel for `g`: depthwise, Winograd, or im2col + GEMM (with the `gemm` crate on
/// CPUs without AVX2 + FMA, whose GEMM has tuned kernels for them). With `scale`, the weights
/// of output channel `o` are multiplied by `scale[o]` (an inference BatchNorm; each product
/// rounded once from f64, as a folded copy would hold it): the packed
/// kernels do it while packing; the depthwise and `gemm` paths use a scaled copy of `w`.
fn run_kernel(
    x: &[f32],
    w: &[f32],
    scale: Option<&[f64]>,
    bias: Option<&[f32]>,
    g: &Geometry,
    act: Activation,
    simd: Simd,
) -> Vec<f32> {
    let packed = simd.avx2() && !(g.groups == g.c && g.groups > 1);
    let scaled: Option<Vec<f32>> = match scale {
        Some(s) if !packed => {
            let per_out = w.len() / g.o.max(1);
            Some(
                w.chunks(per_out.max(1))
                    .zip(s)
                    .flat_map(|(row, &f)| row.iter().map(move |&v| (v as f64 * f) as f32))
                    .collect(),
            )
        }
        _ => None,
    };
    let w = scaled.as_deref().unwrap_or(w);
    if g.groups == g.c && g.groups > 1 {
        depthwise::depthwise(x, w, bias, g, act, simd)
    } else if !simd.avx2() {
        gemm_conv::conv_gemm(x, w, bias, g, act)
    } else if dilated::applies(g, simd) {
        dilated::conv_taps(x, &dilated::pack_weights(w, scale, g), bias, g, act, simd)
    } else if winograd::applies(g) {
        winograd::conv_winograd(x, &winograd::pack_weights(w, scale, g), bias, g, act, simd)
    } else {
        im2col::conv_im2col(
            x,
            &im2col::pack_weights(w, scale, g, simd),
            bias,
            g,
            act,
            simd,
        )
    }
}

/// The CPU f32 path: contiguous slices in, a new tensor out.
fn conv2d_cpu_f32(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &Geometry,
    act: Activation,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let out = with_cpu_f32(&x, |xs| {
        with_cpu_f32(&weight, |ws| {
            let run = |bs: Option<&[f32]>| run_kernel(xs, ws, None, bs, g, act, Simd::detect());
            match &bias {
                Some(b) => with_cpu_f32(b, |bs| run(Some(bs))),
                None => Ok(run(None)),
            }
        })
    })???;
    Ok(Tensor::from_vec(out, (g.n, g.o, g.ho, g.wo), &Device::Cpu)?)
}

/// `act(conv2d(x, weight) * scale + shift)` per output channel (an inference BatchNorm after
/// a bias-free conv) on segkit's CPU kernels, which multiply the weights by `scale` as they
/// pack them: no folded copy of the weights is made or kept. `None` when that path does not
/// apply (another device or dtype, a tensor that records gradients, an empty output): the
/// caller then folds the norm into the weights and calls [`conv2d`].
pub(crate) fn conv2d_affine_cpu(
    x: &Tensor,
    weight: &Tensor,
    scale: &[f64],
    shift: &[f32],
    p: Conv2dParams,
    act: Activation,
) -> Result<Option<Tensor>> {
    let g = Geometry::new(x, weight, None, p)?;
    let fast = !x.track_op()
        && !weight.track_op()
        && x.device().is_cpu()
        && weight.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && g.n * g.o * g.ho * g.wo > 0
        && g.c > 0;
    if !fast {
        return Ok(None);
    }
    if scale.len() != g.o || shift.len() != g.o {
        return Err(Error::shape("conv2d scale / shift", &[g.o], &[scale.len()]));
    }
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let out = with_cpu_f32(&x, |xs| {
        with_cpu_f32(&weight, |ws| {
            run_kernel(xs, ws, Some(scale), Some(shift), &g, act, Simd::detect())
        })
    })??;
    Ok(Some(Tensor::from_vec(
        out,
        (g.n, g.o, g.ho, g.wo),
        &Device::Cpu,
    )?))
}
