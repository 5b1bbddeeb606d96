//! Tests of [`super::resized_log_softmax_gather`] against the composed ops: the kernel
//! resize + `log_softmax_gather` for the values (bit-identical), the differentiable matmul
//! resize + `log_softmax_gather` for the gradient.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::ops::resize_bilinear_fallback;

/// `(N, C, h, w, H, W, align_corners)`: up- and down-sampling, both corner modes, one input
/// row, ADE20K's full training size (several backward bands per image).
const CASES: [(usize, usize, usize, usize, usize, usize, bool); 6] = [
    (2, 7, 5, 6, 17, 23, false),
    (2, 7, 5, 6, 17, 23, true),
    (1, 3, 1, 4, 3, 9, false),
    (2, 4, 9, 11, 4, 5, false),
    (1, 19, 8, 16, 64, 128, true),
    (2, 150, 64, 64, 512, 512, false),
];

fn indices(n: usize, c: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7 + i / 13) % c) as u32).collect()
}

fn max_abs(t: &Tensor) -> Result<f32> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn values_equal_the_resize_kernel_then_log_softmax_gather() -> Result<()> {
    for (n, c, h, w, oh, ow, ac) in CASES {
        let x = (Tensor::randn(0f32, 3.0, (n, c, h, w), &Device::Cpu)? + 5.0)?;
        let idx = indices(n * oh * ow, c);
        let fused = resized_log_softmax_gather(&x, (oh, ow), ac, idx.clone())?;
        let composed = log_softmax_gather(&resize_bilinear(&x, (oh, ow), ac)?, 1, idx)?;
        assert_eq!(fused.dims(), [n, oh, ow]);
        let (a, b) = (
            fused.flatten_all()?.to_vec1::<f32>()?,
            composed.flatten_all()?.to_vec1::<f32>()?,
        );
        let diff = a
            .iter()
            .zip(&b)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        assert_eq!(
            diff, 0,
            "{n}x{c}x{h}x{w} -> {oh}x{ow} ac {ac}: {diff} values differ"
        );
    }
    Ok(())
}

#[test]
fn gradient_equals_the_composed_ops() -> Result<()> {
    for (n, c, h, w, oh, ow, ac) in CASES {
        let x0 = Tensor::randn(0f32, 3.0, (n, c, h, w), &Device::Cpu)?;
        let idx = indices(n * oh * ow, c);
        let dy = Tensor::randn(0f32, 1.0, (n, oh, ow), &Device::Cpu)?;
        let (a, b) = (Var::from_tensor(&x0)?, Var::from_tensor(&x0.copy()?)?);
        let ya = resized_log_softmax_gather(a.as_tensor(), (oh, ow), ac, idx.clone())?;
        let yb = composed(b.as_tensor(), (oh, ow), ac, idx)?;
        let rel = max_abs(&(&ya - &yb)?)? / max_abs(&yb)?.max(1.0);
        assert!(rel < 1e-5, "{n}x{c}x{h}x{w} -> {oh}x{ow}: value {rel}");
        let ga = (&ya * &dy)?.sum_all()?.backward()?;
        let gb = (&yb * &dy)?.sum_all()?.backward()?;
        let (ga, gb) = match (ga.get(a.as_tensor()), gb.get(b.as_tensor())) {
            (Some(p), Some(q)) => (p.clone(), q.clone()),
            _ => panic!("no gradient"),
        };
        let rel = max_abs(&(&ga - &gb)?)? / max_abs(&gb)?;
        assert!(
            rel < 1e-5,
            "{n}x{c}x{h}x{w} -> {oh}x{ow} ac {ac}: grad {rel}"
        );
    }
    Ok(())
}

/// The gradient against central differences of the composed ops in f64, at every input
/// element (independent of the composed backward passes the test above compares with).
#[test]
fn gradient_matches_finite_differences() -> Result<()> {
    let (n, c, h, w, oh, ow) = (1, 3, 4, 5, 9, 11);
    let x0 = Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu)?;
    let idx = indices(n * oh * ow, c);
    let a = Var::from_tensor(&x0)?;
    let y = resized_log_softmax_gather(a.as_tensor(), (oh, ow), false, idx.clone())?;
    let g = y.sum_all()?.backward()?;
    let g = g
        .get(a.as_tensor())
        .cloned()
        .map(|t| t.flatten_all())
        .transpose()?;
    let g = g
        .map(|t| t.to_vec1::<f32>())
        .transpose()?
        .unwrap_or_default();
    // Central differences on the composed values at every input element.
    let base = x0.flatten_all()?.to_vec1::<f32>()?;
    let f = |v: &[f32]| -> Result<f64> {
        let t = Tensor::from_slice(v, (n, c, h, w), &Device::Cpu)?.to_dtype(DType::F64)?;
        let up = resize_bilinear_fallback(&t, (oh, ow), false)?;
        let lp = log_softmax_gather(&up, 1, idx.clone())?;
        Ok(lp.sum_all()?.to_scalar::<f64>()?)
    };
    for i in 0..base.len() {
        let (mut p, mut m) = (base.clone(), base.clone());
        p[i] += 1e-2;
        m[i] -= 1e-2;
        let num = (f(&p)? - f(&m)?) / 2e-2;
        assert!(
            (num - g[i] as f64).abs() < 2e-3,
            "element {i}: {num} vs {}",
            g[i]
        );
    }
    Ok(())
}

#[test]
fn same_size_is_log_softmax_gather_and_bad_input_is_an_error() -> Result<()> {
    let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu)?;
    let idx = indices(40, 3);
    let a = resized_log_softmax_gather(&x, (4, 5), false, idx.clone())?;
    let b = log_softmax_gather(&x, 1, idx)?;
    assert_eq!(max_abs(&(a - b)?)?, 0.0);
    assert!(resized_log_softmax_gather(&x, (8, 8), false, vec![0; 127]).is_err());
    assert!(resized_log_softmax_gather(&x, (8, 8), false, vec![3; 128]).is_err());
    assert!(resized_log_softmax_gather(&x, (0, 8), false, vec![]).is_err());
    let r3 = Tensor::zeros((3, 4, 5), DType::F32, &Device::Cpu)?;
    assert!(resized_log_softmax_gather(&r3, (8, 8), false, vec![0; 64]).is_err());
    Ok(())
}
