//! segkit's CPU convolution kernels against candle's own `conv2d` + bias + activation.
//!
//! Geometries segkit refuses are checked against PyTorch's rule (ATen's `check_shape_forward`,
//! restated in [`pytorch_accepts`]): segkit must refuse exactly those PyTorch refuses. candle
//! cannot be asked: candle-core 0.11's `Tensor::conv2d` does not check that the dilated kernel
//! fits the padded input, computes the output size with wrapping `usize` arithmetic and, probed
//! on this grid's refused cases, returns a 1 x 8 x (2^64 - 5) x (2^64 - 5) tensor (input
//! 1x4x1x1, 7x7 kernel, no padding) or panics with "capacity overflow" (1x4x13x11, 7x7,
//! dilation 2).

use candle_core::{DType, Device, IndexOp, Tensor};
use segkit_core::ops::{activate, conv2d, Activation, Conv2dParams};

const ACTS: [Activation; 4] = [
    Activation::None,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Gelu,
];

/// Deterministic values in [-1, 1) (splitmix64).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = values(n, seed).into_iter().map(|v| v * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// candle's conv2d, bias and activation, composed from plain candle ops.
fn reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
    act: Activation,
) -> Tensor {
    let y = x
        .conv2d(w, p.padding, p.stride, p.dilation, p.groups)
        .unwrap();
    let y = match b {
        Some(b) => y
            .broadcast_add(&b.reshape((1, b.elem_count(), 1, 1)).unwrap())
            .unwrap(),
        None => y,
    };
    match act {
        Activation::None => y,
        Activation::Relu => y.relu().unwrap(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(&y).unwrap(),
        Activation::Gelu => y.gelu_erf().unwrap(),
    }
}

/// `max|got - want| / max(1, max|want|)`, after checking the shapes agree.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = g.iter().zip(&w).fold(
        0f32,
        |m, (a, b)| if (a - b).abs() > m { (a - b).abs() } else { m },
    );
    assert!(diff.is_finite(), "non-finite difference");
    diff / scale
}

const TOL: f32 = 1e-4;

struct Case {
    x: [usize; 4],
    o: usize,
    k: (usize, usize),
    p: Conv2dParams,
}

/// Runs one case for every activation and bias on/off; returns the worst relative error, or
/// `None` when the geometry is invalid (then both implementations must refuse it).
fn check(case: &Case, seed: u64) -> Option<f32> {
    let Case { x: xs, o, k, p } = *case;
    let x = tensor(&xs, seed, 1.0);
    let cg = xs[1] / p.groups;
    let fan_in = (cg * k.0 * k.1).max(1) as f32;
    let w = tensor(&[o, cg, k.0, k.1], seed + 1, 2.0 / fan_in.sqrt());
    let b = tensor(&[o], seed + 2, 0.5);
    let ours = conv2d(&x, &w, None, p, Activation::None);
    let Ok(_) = ours else {
        return None;
    };
    let mut worst = 0f32;
    for bias in [None, Some(&b)] {
        for act in ACTS {
            let got = conv2d(&x, &w, bias, p, act).unwrap();
            let want = reference(&x, &w, bias, p, act);
            let e = rel_err(&got, &want);
            assert!(
                e <= TOL,
                "x {xs:?} o {o} k {k:?} {p:?} bias {} {act:?}: rel err {e}",
                bias.is_some()
            );
            worst = worst.max(e);
        }
    }
    Some(worst)
}

/// Whether `torch.nn.functional.conv2d` accepts the case: positive stride, dilation and groups;
/// groups dividing the input and output channels; the padded input at least as large as the
/// dilated kernel in both dimensions (ATen's `check_shape_forward`: "Kernel size can't be
/// greater than actual input size").
fn pytorch_accepts(case: &Case) -> bool {
    let Case { x, o, k, p } = *case;
    let fits = |len: usize, k: usize| len + 2 * p.padding > p.dilation * (k - 1);
    p.stride > 0
        && p.dilation > 0
        && p.groups > 0
        && x[1] % p.groups == 0
        && o % p.groups == 0
        && fits(x[2], k.0)
        && fits(x[3], k.1)
}

fn params(stride: usize, padding: usize, dilation: usize, groups: usize) -> Conv2dParams {
    Conv2dParams {
        stride,
        padding,
        dilation,
        groups,
    }
}

/// The case of an `x`-shaped input, `o` output channels and a `k` kernel with parameters `p`.
fn case(x: [usize; 4], o: usize, k: (usize, usize), p: Conv2dParams) -> Case {
    Case { x, o, k, p }
}

#[test]
fn grid_matches_candle() {
    // C = 4, O = 8: groups 1, 2 and C (depthwise with channel multiplier 2) all divide both.
    let mut worst = 0f32;
    let (mut run, mut refused) = (0, 0);
    for (xi, xs) in [[2, 4, 13, 11], [1, 4, 1, 1], [1, 4, 6, 17]]
        .iter()
        .enumerate()
    {
        for k in [1, 3, 7] {
            for stride in [1, 2] {
                for padding in [0, 1, 3] {
                    for dilation in [1, 2, 4] {
                        for groups in [1, 2, 4] {
                            let case = Case {
                                x: *xs,
                                o: 8,
                                k: (k, k),
                                p: params(stride, padding, dilation, groups),
                            };
                            let seed = (xi * 1000 + k * 100 + stride * 10 + padding) as u64;
                            let got = check(&case, seed + dilation as u64 * 7 + groups as u64);
                            assert_eq!(
                                got.is_some(),
                                pytorch_accepts(&case),
                                "x {xs:?} k {k} {:?}: segkit and PyTorch disagree on validity",
                                case.p
                            );
                            match got {
                                Some(e) => {
                                    worst = worst.max(e);
                                    run += 1;
                                }
                                None => refused += 1,
                            }
                        }
                    }
                }
            }
        }
    }
    println!("grid: {run} geometries x 8 (bias, act) checked, {refused} refused, worst rel err {worst:e}");
    // `torch.nn.functional.conv2d` (torch 2.x) over this grid: 324 run, 162 raise "Calculated
    // padded input size per channel ... Kernel size can't be greater than actual input size".
    assert_eq!((run, refused), (324, 162));
}

#[test]
fn odd_and_real_shapes_match_candle() {
    let cases = [
        // Odd sizes.
        case([1, 3, 97, 129], 16, (3, 3), params(1, 1, 1, 1)),
        case([1, 3, 97, 129], 8, (7, 7), params(2, 3, 1, 1)),
        case([1, 3, 97, 129], 3, (3, 3), params(2, 4, 4, 3)),
        case([2, 5, 7, 9], 7, (3, 3), params(1, 1, 1, 1)),
        case([2, 5, 7, 9], 10, (3, 3), params(2, 2, 2, 5)),
        case([2, 5, 7, 9], 4, (1, 1), params(2, 0, 1, 1)),
        case([2, 5, 7, 9], 4, (1, 1), params(1, 1, 1, 1)),
        // Non-square kernels.
        case([1, 6, 19, 23], 6, (1, 7), params(1, 3, 1, 2)),
        case([1, 6, 19, 23], 6, (7, 1), params(1, 3, 1, 1)),
        // Kernels wider than the per-column tables of the packing code.
        case([1, 2, 5, 40], 3, (3, 19), params(1, 9, 1, 1)),
        case([1, 2, 9, 50], 5, (1, 21), params(2, 4, 2, 1)),
        // 1x1 maps.
        case([3, 16, 1, 1], 32, (1, 1), params(1, 0, 1, 1)),
        case([3, 16, 1, 1], 16, (3, 3), params(1, 1, 1, 16)),
        case([3, 16, 1, 1], 8, (3, 3), params(1, 1, 1, 1)),
        // ResNet-like layers, several output-row tiles per image.
        case([1, 64, 40, 36], 64, (3, 3), params(1, 1, 1, 1)),
        case([1, 64, 40, 36], 128, (3, 3), params(2, 1, 1, 1)),
        case([1, 256, 48, 48], 96, (3, 3), params(1, 2, 2, 1)),
        case([2, 128, 24, 20], 256, (1, 1), params(1, 0, 1, 1)),
        case([1, 128, 40, 40], 64, (1, 1), params(2, 0, 1, 1)),
        case([1, 64, 33, 31], 64, (3, 3), params(1, 1, 1, 32)),
        case([1, 3, 130, 126], 64, (7, 7), params(2, 3, 1, 1)),
        // Depthwise.
        case([2, 32, 30, 28], 32, (3, 3), params(1, 4, 4, 32)),
        case([1, 32, 30, 28], 32, (5, 5), params(2, 2, 1, 32)),
    ];
    let mut worst = 0f32;
    for (i, c) in cases.iter().enumerate() {
        assert!(pytorch_accepts(c), "case {i}");
        let e = check(c, 500 + i as u64).unwrap_or_else(|| panic!("case {i} refused"));
        worst = worst.max(e);
    }
    println!(
        "odd/real shapes: {} cases x 8, worst rel err {worst:e}",
        cases.len()
    );
}

#[test]
fn winograd_shapes_match_candle() {
    // 3x3 stride-1 convs with enough channels and tiles take the Winograd path: odd sizes,
    // every padding / dilation combination, more than one KC block of input channels, output
    // channels that do not fill the last microkernel panel, batches.
    let mut worst = 0f32;
    let mut n = 0;
    for (xs, o) in [
        ([2, 16, 29, 31], 16),
        ([1, 300, 32, 34], 70),
        ([2, 24, 49, 17], 20),
        ([1, 20, 36, 30], 18),
    ] {
        for dilation in [1, 2, 3, 4] {
            for padding in [0, 1, 2, 5] {
                let case = Case {
                    x: xs,
                    o,
                    k: (3, 3),
                    p: params(1, padding, dilation, 1),
                };
                assert!(pytorch_accepts(&case));
                let e =
                    check(&case, 900 + n).unwrap_or_else(|| panic!("{xs:?} {:?} refused", case.p));
                worst = worst.max(e);
                n += 1;
            }
        }
    }
    println!("winograd: {n} geometries x 8, worst rel err {worst:e}");
    assert_eq!(n, 64);
}

#[test]
fn non_contiguous_inputs_match_candle() {
    let x = tensor(&[1, 8, 12, 10], 7, 1.0).transpose(2, 3).unwrap();
    let w = tensor(&[6, 3, 3, 8], 8, 0.3).permute((0, 3, 1, 2)).unwrap();
    let b = tensor(&[12], 9, 1.0).i(..6).unwrap();
    let p = params(1, 1, 1, 1);
    let got = conv2d(&x, &w, Some(&b), p, Activation::Gelu).unwrap();
    let want = reference(&x, &w, Some(&b), p, Activation::Gelu);
    assert!(rel_err(&got, &want) <= TOL);
}

#[test]
fn activate_matches_candle() {
    for (len, seed) in [(7usize, 1u64), (1000, 2), (300_001, 3)] {
        let x = tensor(&[len], seed, 12.0);
        for act in ACTS {
            let got = activate(&x, act).unwrap();
            let want = reference_act(&x, act);
            let e = rel_err(&got, &want);
            assert!(e <= 1e-6, "activate {act:?} len {len}: {e}");
        }
    }
    // Extreme inputs stay finite and saturate.
    let x = Tensor::new(&[-1e30f32, -100.0, 100.0, 1e30], &Device::Cpu).unwrap();
    let s = activate(&x, Activation::Sigmoid)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(s[0] >= 0.0 && s[0] < 1e-30 && s[1] < 1e-30 && s[2] == 1.0 && s[3] == 1.0);
    let g = activate(&x, Activation::Gelu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(g, [0.0, 0.0, 100.0, 1e30]);
    // Other dtypes and layouts fall back to candle.
    let x = tensor(&[4, 6], 4, 3.0);
    let xt = x.t().unwrap();
    assert!(
        rel_err(
            &activate(&xt, Activation::Gelu).unwrap(),
            &reference_act(&xt, Activation::Gelu)
        ) <= 1e-6
    );
    let xd = x.to_dtype(DType::F64).unwrap();
    let got = activate(&xd, Activation::Sigmoid).unwrap();
    assert_eq!(got.dtype(), DType::F64);
}

fn reference_act(x: &Tensor, act: Activation) -> Tensor {
    match act {
        Activation::None => x.clone(),
        Activation::Relu => x.relu().unwrap(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(x).unwrap(),
        Activation::Gelu => x.gelu_erf().unwrap(),
    }
}

#[test]
fn other_dtypes_use_candle() {
    let x = tensor(&[1, 4, 9, 9], 11, 1.0).to_dtype(DType::F64).unwrap();
    let w = tensor(&[4, 2, 3, 3], 12, 0.3).to_dtype(DType::F64).unwrap();
    let p = params(2, 1, 1, 2);
    let got = conv2d(&x, &w, None, p, Activation::Relu).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    let want = reference(&x, &w, None, p, Activation::Relu);
    let e = rel_err(
        &got.to_dtype(DType::F32).unwrap(),
        &want.to_dtype(DType::F32).unwrap(),
    );
    assert!(e <= TOL);
}

#[test]
fn empty_batch() {
    let x = Tensor::zeros((0, 4, 9, 9), DType::F32, &Device::Cpu).unwrap();
    let w = tensor(&[6, 4, 3, 3], 1, 0.3);
    match conv2d(&x, &w, None, params(1, 1, 1, 1), Activation::Relu) {
        Ok(y) => assert_eq!(y.dims(), [0, 6, 9, 9]),
        Err(e) => println!("empty batch refused: {e}"),
    }
}

#[test]
fn invalid_shapes_are_errors() {
    let x = tensor(&[1, 4, 8, 8], 1, 1.0);
    let w = tensor(&[6, 4, 3, 3], 2, 0.3);
    let b = tensor(&[6], 3, 0.3);
    let ok = params(1, 1, 1, 1);
    let act = Activation::Relu;
    let bad: Vec<(&str, segkit_core::Result<Tensor>)> = vec![
        ("rank-3 input", conv2d(&x.i(0).unwrap(), &w, None, ok, act)),
        ("rank-3 weight", conv2d(&x, &w.i(0).unwrap(), None, ok, act)),
        (
            "channel mismatch",
            conv2d(&x, &tensor(&[6, 3, 3, 3], 4, 1.0), None, ok, act),
        ),
        ("groups 0", conv2d(&x, &w, None, params(1, 1, 1, 0), act)),
        ("stride 0", conv2d(&x, &w, None, params(0, 1, 1, 1), act)),
        ("dilation 0", conv2d(&x, &w, None, params(1, 1, 0, 1), act)),
        (
            "groups not dividing C",
            conv2d(
                &x,
                &tensor(&[6, 1, 3, 3], 5, 1.0),
                None,
                params(1, 1, 1, 3),
                act,
            ),
        ),
        (
            "groups not dividing O",
            conv2d(
                &x,
                &tensor(&[6, 1, 3, 3], 5, 1.0),
                None,
                params(1, 1, 1, 4),
                act,
            ),
        ),
        (
            "weight channels vs groups",
            conv2d(&x, &w, None, params(1, 1, 1, 2), act),
        ),
        (
            "kernel larger than input",
            conv2d(&x, &tensor(&[6, 4, 11, 11], 6, 1.0), None, ok, act),
        ),
        (
            "dilated kernel larger than input",
            conv2d(&x, &w, None, params(1, 0, 4, 1), act),
        ),
        (
            "bias length",
            conv2d(&x, &w, Some(&tensor(&[5], 7, 1.0)), ok, act),
        ),
        (
            "bias rank",
            conv2d(&x, &w, Some(&b.reshape((1, 6)).unwrap()), ok, act),
        ),
        (
            "dtype mismatch",
            conv2d(&x, &w.to_dtype(DType::F64).unwrap(), None, ok, act),
        ),
        (
            "bias dtype",
            conv2d(&x, &w, Some(&b.to_dtype(DType::F64).unwrap()), ok, act),
        ),
        (
            "huge padding",
            conv2d(&x, &w, None, params(1, usize::MAX / 2 + 1, 1, 1), act),
        ),
    ];
    for (what, r) in bad {
        assert!(r.is_err(), "{what}: expected an error");
    }
}
