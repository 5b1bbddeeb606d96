use candle_core::{Device, Var};

use super::*;

fn layer(c: usize, dev: &Device) -> Result<(BatchNorm, Vec<Var>)> {
    let w = Var::from_tensor(&(Tensor::rand(0.5f32, 1.5, c, dev)?))?;
    let b = Var::from_tensor(&(Tensor::rand(-0.5f32, 0.5, c, dev)?))?;
    let m = Var::from_tensor(&(Tensor::rand(-0.1f32, 0.1, c, dev)?))?;
    let v = Var::from_tensor(&(Tensor::rand(0.5f32, 1.5, c, dev)?))?;
    let bn = BatchNorm::new_with_momentum(
        c,
        m.as_tensor().clone(),
        v.as_tensor().clone(),
        w.as_tensor().clone(),
        b.as_tensor().clone(),
        1e-5,
        0.1,
    )?;
    Ok((bn, vec![w, b, m, v]))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Forward, running statistics and all three gradients equal candle-nn's composed BatchNorm
/// (+ ReLU) on the same input and upstream gradient.
#[test]
fn matches_candle_batch_norm_forward_backward_and_running_stats() -> Result<()> {
    let dev = Device::Cpu;
    for act in [Activation::None, Activation::Relu] {
        let (ours, pv) = layer(5, &dev)?;
        // The reference layer on copies of the same values.
        let copy = |v: &Var| Var::from_tensor(&v.as_tensor().copy()?);
        let (rw, rb, rm, rv) = (copy(&pv[0])?, copy(&pv[1])?, copy(&pv[2])?, copy(&pv[3])?);
        let reference = BatchNorm::new_with_momentum(
            5,
            rm.as_tensor().clone(),
            rv.as_tensor().clone(),
            rw.as_tensor().clone(),
            rb.as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        let x0 = (Tensor::randn(0f32, 2.0, (3, 5, 7, 9), &dev)? + 0.7)?;
        let up = Tensor::randn(0f32, 1.0, (3, 5, 7, 9), &dev)?;
        let (x1, x2) = (Var::from_tensor(&x0)?, Var::from_tensor(&x0.copy()?)?);
        let y1 = batch_norm_train(x1.as_tensor(), &ours, act)?;
        let y2 = activate(&reference.forward_t(x2.as_tensor(), true)?, act)?;
        assert!(max_diff(&y1, &y2)? < 1e-5, "{act:?} forward");
        let g1 = (&y1 * &up)?.sum_all()?.backward()?;
        let g2 = (&y2 * &up)?.sum_all()?.backward()?;
        for (a, b, what) in [
            (x1.as_tensor(), x2.as_tensor(), "dx"),
            (pv[0].as_tensor(), rw.as_tensor(), "dweight"),
            (pv[1].as_tensor(), rb.as_tensor(), "dbias"),
        ] {
            let (ga, gb) = (g1.get(a).expect(what), g2.get(b).expect(what));
            let scale = gb
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            let d = max_diff(ga, gb)?;
            assert!(d < 2e-5 * scale, "{act:?} {what}: {d} (scale {scale})");
        }
        assert!(
            max_diff(pv[2].as_tensor(), rm.as_tensor())? < 1e-6,
            "running mean"
        );
        assert!(
            max_diff(pv[3].as_tensor(), rv.as_tensor())? < 1e-5,
            "running var"
        );
    }
    Ok(())
}

#[test]
fn rejects_a_wrong_channel_count() -> Result<()> {
    let dev = Device::Cpu;
    let (bn, _) = layer(4, &dev)?;
    let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev)?;
    assert!(batch_norm_train(&x, &bn, Activation::Relu).is_err());
    Ok(())
}

/// The residual form equals BatchNorm, add and ReLU composed from candle ops: the output, the
/// gradients of x, weight, bias and the residual, and the running statistics.
#[test]
fn residual_form_matches_composed_ops() -> Result<()> {
    let dev = Device::Cpu;
    for act in [Activation::None, Activation::Relu] {
        let (ours, pv) = layer(4, &dev)?;
        let copy = |v: &Var| Var::from_tensor(&v.as_tensor().copy()?);
        let (rw, rb, rm, rv) = (copy(&pv[0])?, copy(&pv[1])?, copy(&pv[2])?, copy(&pv[3])?);
        let reference = BatchNorm::new_with_momentum(
            4,
            rm.as_tensor().clone(),
            rv.as_tensor().clone(),
            rw.as_tensor().clone(),
            rb.as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        let x0 = Tensor::randn(0f32, 2.0, (2, 4, 6, 5), &dev)?;
        let r0 = Tensor::randn(0f32, 1.0, (2, 4, 6, 5), &dev)?;
        let up = Tensor::randn(0f32, 1.0, (2, 4, 6, 5), &dev)?;
        let (x1, x2) = (Var::from_tensor(&x0)?, Var::from_tensor(&x0.copy()?)?);
        let (r1, r2) = (Var::from_tensor(&r0)?, Var::from_tensor(&r0.copy()?)?);
        let y1 = batch_norm_add_train(x1.as_tensor(), &ours, r1.as_tensor(), act)?;
        let bn = reference.forward_t(x2.as_tensor(), true)?;
        let y2 = activate(&(bn + r2.as_tensor())?, act)?;
        assert!(max_diff(&y1, &y2)? < 1e-5, "{act:?} forward");
        let g1 = (&y1 * &up)?.sum_all()?.backward()?;
        let g2 = (&y2 * &up)?.sum_all()?.backward()?;
        for (a, b, what) in [
            (x1.as_tensor(), x2.as_tensor(), "dx"),
            (r1.as_tensor(), r2.as_tensor(), "dresidual"),
            (pv[0].as_tensor(), rw.as_tensor(), "dweight"),
            (pv[1].as_tensor(), rb.as_tensor(), "dbias"),
        ] {
            let (ga, gb) = (g1.get(a).expect(what), g2.get(b).expect(what));
            let scale = gb
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            let d = max_diff(ga, gb)?;
            assert!(d < 2e-5 * scale, "{act:?} {what}: {d} (scale {scale})");
        }
        assert!(
            max_diff(pv[2].as_tensor(), rm.as_tensor())? < 1e-6,
            "running mean"
        );
        assert!(
            max_diff(pv[3].as_tensor(), rv.as_tensor())? < 1e-5,
            "running var"
        );
    }
    let (bn, _) = layer(4, &dev)?;
    let x = Tensor::zeros((2, 4, 3, 3), DType::F32, &dev)?;
    let short = Tensor::zeros((2, 4, 3, 2), DType::F32, &dev)?;
    assert!(batch_norm_add_train(&x, &bn, &short, Activation::Relu).is_err());
    Ok(())
}

/// ReLU's gradient is PyTorch's at exact zeros (0, not candle's 1) on both paths: with a
/// zero-initialised norm (weight 0, bias 0) and a zero residual, every output is exactly 0 and
/// no gradient reaches the bias, in the fused f32 kernel and in the composed f64 path alike.
#[test]
fn relu_gradient_at_exact_zeros_is_pytorchs() -> Result<()> {
    let dev = Device::Cpu;
    for dt in [DType::F32, DType::F64] {
        let z = |n: usize| Var::from_tensor(&Tensor::zeros(n, dt, &dev)?);
        let (w, b) = (z(3)?, z(3)?);
        let ones = Tensor::ones(3, dt, &dev)?;
        let bn = BatchNorm::new_with_momentum(
            3,
            z(3)?.as_tensor().clone(),
            Var::from_tensor(&ones)?.as_tensor().clone(),
            w.as_tensor().clone(),
            b.as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &dev)?.to_dtype(dt)?)?;
        let r = Tensor::zeros((2, 3, 4, 4), dt, &dev)?;
        let y = batch_norm_add_train(x.as_tensor(), &bn, &r, Activation::Relu)?;
        let g = y.sum_all()?.backward()?;
        let db = g.get(b.as_tensor()).expect("bias gradient");
        let s = db
            .abs()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert_eq!(s, 0.0, "{dt:?}");
    }
    Ok(())
}

/// The gradient of `t` in `g`, or an error naming the missing gradient.
fn grad<'a>(g: &'a candle_core::backprop::GradStore, t: &Tensor) -> Result<&'a Tensor> {
    g.get(t)
        .ok_or_else(|| Error::InvalidArgument(format!("no gradient for {:?}", t.id())))
}

/// The fused convolution + BatchNorm (+ ReLU) equals `conv2d` then `batch_norm_train`: the
/// output, the running statistics and the gradients of the input, the convolution weight and
/// the norm's weight and bias, bit for bit; a second backward pass over the same graph (which
/// recomputes the convolution's output) gives the same gradients again.
#[test]
fn conv_bn_train_equals_conv_then_batch_norm() -> Result<()> {
    use crate::ops::{conv2d, conv_bn_train, Conv2dParams};
    let dev = Device::Cpu;
    for (act, k, stride, groups) in [
        (Activation::Relu, 3, 1, 1),
        (Activation::None, 3, 2, 1),
        (Activation::Relu, 1, 1, 1),
        (Activation::Relu, 3, 1, 2),
    ] {
        let p = Conv2dParams {
            stride,
            padding: k / 2,
            dilation: 1,
            groups,
        };
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 9, 7), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (6, 4 / groups, k, k), &dev)?)?;
        let (bn1, v1) = layer(6, &dev)?;
        let bn2 = BatchNorm::new_with_momentum(
            6,
            v1[2].as_tensor().copy()?,
            v1[3].as_tensor().copy()?,
            v1[0].as_tensor().clone(),
            v1[1].as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        let fused = conv_bn_train(x.as_tensor(), w.as_tensor(), None, &bn1, p, act)?;
        let z = conv2d(x.as_tensor(), w.as_tensor(), None, p, Activation::None)?;
        let composed = batch_norm_train(&z, &bn2, act)?;
        let what = format!("{act:?} k{k} s{stride} g{groups}");
        assert_eq!(max_diff(&fused, &composed)?, 0.0, "{what}: output");
        assert_eq!(
            max_diff(bn1.running_mean(), bn2.running_mean())?,
            0.0,
            "{what}: mean"
        );
        assert_eq!(
            max_diff(bn1.running_var(), bn2.running_var())?,
            0.0,
            "{what}: var"
        );
        let r = Tensor::randn(0f32, 1.0, fused.dims(), &dev)?;
        let lf = (&fused * &r)?.sum_all()?;
        let lc = (&composed * &r)?.sum_all()?;
        let (gf, gc, again) = (lf.backward()?, lc.backward()?, lf.backward()?);
        for (i, t) in [
            x.as_tensor(),
            w.as_tensor(),
            v1[0].as_tensor(),
            v1[1].as_tensor(),
        ]
        .into_iter()
        .enumerate()
        {
            let (a, b) = (grad(&gf, t)?, grad(&gc, t)?);
            assert_eq!(max_diff(a, b)?, 0.0, "{what}: gradient {i}");
            let a2 = grad(&again, t)?;
            assert_eq!(
                max_diff(a, a2)?,
                0.0,
                "{what}: second backward, gradient {i}"
            );
        }
    }
    Ok(())
}
