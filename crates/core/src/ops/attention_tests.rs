//! [`attention`] against the composed candle ops (`attention_fallback`): outputs and the
//! gradients of `q`, `k`, `v`, over masks of every broadcast shape (with `-inf` entries),
//! a dropout multiplier, more query rows than one block, and head widths that differ for
//! keys and values.

use candle_core::{Device, Tensor, Var};

use super::*;

/// Largest absolute difference between two tensors, relative to the larger magnitude.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-6);
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / scale
}

/// One case: `(b, lq, lk, heads, d, dv)`, a mask shape (or none), with or without dropout.
fn check(
    dims: (usize, usize, usize, usize, usize, usize),
    mask: Option<&[usize]>,
    drop: bool,
    scale: Option<f64>,
) {
    let (b, lq, lk, heads, d, dv) = dims;
    let dev = Device::Cpu;
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, lq, heads * d), &dev).unwrap()).unwrap();
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, lk, heads * d), &dev).unwrap()).unwrap();
    let v =
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, lk, heads * dv), &dev).unwrap()).unwrap();
    let mask = mask.map(|shape| {
        // Random additive values with about a quarter of the entries at -inf, never a whole
        // row (the last key stays open).
        let r = Tensor::rand(0f32, 1.0, shape, &dev).unwrap();
        let n = *shape.last().unwrap();
        let open = Tensor::arange(0u32, n as u32, &dev)
            .unwrap()
            .ge(n as u32 - 1)
            .unwrap()
            .broadcast_as(shape)
            .unwrap();
        let hide = r
            .lt(0.25)
            .unwrap()
            .to_dtype(candle_core::DType::U8)
            .unwrap();
        let hide = (hide.to_dtype(candle_core::DType::F32).unwrap()
            * open
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .affine(-1.0, 1.0)
                .unwrap())
        .unwrap();
        let neg = Tensor::full(f32::NEG_INFINITY, shape, &dev).unwrap();
        hide.ne(0f32).unwrap().where_cond(&neg, &r).unwrap()
    });
    let keep = drop.then(|| {
        let r = Tensor::rand(0f32, 1.0, (b, heads, lq, lk), &dev).unwrap();
        (r.ge(0.1)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            / 0.9)
            .unwrap()
    });
    let w = Tensor::randn(0f32, 1.0, (b, lq, heads * dv), &dev).unwrap();
    let run = |fused: bool| {
        let f = if fused { attention } else { attention_fallback };
        let opts = AttentionOptions {
            mask: mask.as_ref(),
            keep: keep.as_ref(),
            scale,
        };
        let o = f(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, opts).unwrap();
        let g = (&o * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let grads = [&q, &k, &v].map(|t| g.get(t.as_tensor()).unwrap().clone());
        (o, grads)
    };
    let (o1, g1) = run(true);
    let (o0, g0) = run(false);
    let what = format!(
        "{dims:?} mask {mask:?} dropout {drop}",
        mask = mask.as_ref().map(|m| m.dims().to_vec())
    );
    assert_eq!(o1.dims(), &[b, lq, heads * dv], "{what}");
    assert!(
        rel_diff(&o1, &o0) < 1e-5,
        "output {what}: {}",
        rel_diff(&o1, &o0)
    );
    for (name, (a, e)) in ["dq", "dk", "dv"].iter().zip(g1.iter().zip(&g0)) {
        let r = rel_diff(a, e);
        assert!(r < 1e-5, "{name} {what}: {r}");
    }
}

#[test]
fn matches_composed_ops() {
    check((2, 5, 7, 3, 4, 4), None, false, None);
    // More query rows than one block, keys and values of different head widths.
    check((1, 150, 97, 8, 32, 16), None, false, None);
    check((1, 130, 33, 2, 8, 8), Some(&[1, 1, 130, 33]), false, None);
    check((2, 9, 33, 4, 8, 8), Some(&[2, 1, 9, 33]), false, None);
    check((2, 9, 33, 4, 8, 8), Some(&[2, 4, 9, 33]), false, None);
    check((2, 9, 33, 4, 8, 8), Some(&[9, 33]), false, None);
    check((2, 9, 33, 4, 8, 8), Some(&[2, 1, 1, 33]), false, None);
    check((3, 70, 40, 2, 16, 8), Some(&[3, 1, 70, 40]), true, None);
    check((3, 11, 40, 2, 16, 8), None, true, None);
    // DANet's position attention: one head, no scaling, more keys than one row block.
    check((2, 100, 100, 1, 8, 32), None, false, Some(1.0));
}

/// A row with every key hidden gives NaN (PyTorch's softmax does too); bad shapes are typed
/// errors.
#[test]
fn edge_cases() -> Result<()> {
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, 2, 8), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, 3, 8), &dev)?;
    let mask = Tensor::new(&[[0f32, 0.0, 0.0], [f32::NEG_INFINITY; 3]], &dev)?;
    let opts = |mask, keep| AttentionOptions {
        mask,
        keep,
        scale: None,
    };
    let o = attention(&q, &k, &k, 2, opts(Some(&mask), None))?.to_vec3::<f32>()?;
    assert!(o[0][0].iter().all(|x| x.is_finite()));
    assert!(o[0][1].iter().all(|x| x.is_nan()));
    assert!(attention(&q, &k, &k, 3, opts(None, None)).is_err());
    assert!(attention(&q, &k.narrow(2, 0, 4)?, &k, 2, opts(None, None)).is_err());
    let bad = Tensor::zeros((2, 3), DType::F32, &dev)?;
    let bad_mask = bad.narrow(0, 0, 1)?.repeat((3, 1))?;
    assert!(attention(&q, &k, &k, 2, opts(Some(&bad_mask), None)).is_err());
    assert!(attention(&q, &k, &k, 2, opts(None, Some(&bad))).is_err());
    Ok(())
}
