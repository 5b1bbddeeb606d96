//! Gradients of segkit-core's ops on tensors that record them (the training paths): the
//! convolution custom op and the pooling custom op against naive f64 definitions, the
//! composed resize / adaptive-pool paths (f64) against central finite differences and the f32
//! resize / adaptive-pool custom ops against those composed paths, and
//! BatchNorm's running-statistics update against PyTorch's formula.

use candle_core::{DType, Device, Tensor, Var};
use segkit_core::nn::{ConvModule, ConvModuleConfig};
use segkit_core::ops::{self, Activation, Conv2dParams};

fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            let v = segkit_core::random::splitmix64(&mut s);
            (v >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn t32(v: &[f64], shape: &[usize]) -> Tensor {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn t64(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn vec_of(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: got {g}, want {w} (scale {scale})"
        );
    }
}

struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
}

/// Naive f64 reference: output, and the gradients of `sum(y * r)` w.r.t. x, w, b.
#[allow(clippy::type_complexity, clippy::needless_range_loop)]
fn naive_conv(
    cs: &ConvCase,
    x: &[f64],
    w: &[f64],
    r: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, (usize, usize)) {
    let ConvCase {
        n,
        c,
        h,
        w: wd,
        o,
        k,
        s,
        p,
        d,
        g,
    } = *cs;
    let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
    let wo = (wd + 2 * p - d * (k - 1) - 1) / s + 1;
    let (cg, og) = (c / g, o / g);
    let mut y = vec![0f64; n * o * ho * wo];
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    let mut db = vec![0f64; o];
    for ni in 0..n {
        for oi in 0..o {
            let gi = oi / og;
            for yy in 0..ho {
                for xx in 0..wo {
                    let yi = ((ni * o + oi) * ho + yy) * wo + xx;
                    let rv = r[yi];
                    db[oi] += rv;
                    for ci in 0..cg {
                        let cc = gi * cg + ci;
                        for i in 0..k {
                            for j in 0..k {
                                let ih = (yy * s + i * d) as isize - p as isize;
                                let iw = (xx * s + j * d) as isize - p as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xi = ((ni * c + cc) * h + ih as usize) * wd + iw as usize;
                                let wi = ((oi * cg + ci) * k + i) * k + j;
                                y[yi] += x[xi] * w[wi];
                                dx[xi] += rv * w[wi];
                                dw[wi] += rv * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw, db, (ho, wo))
}

#[test]
fn conv2d_backward_matches_the_definition() {
    let cases = [
        // n, c, h, w, o, k, s, p, d, g
        (2, 3, 9, 9, 4, 3, 1, 1, 1, 1),
        (2, 3, 11, 8, 5, 3, 2, 1, 1, 1),
        (1, 4, 10, 13, 6, 1, 2, 0, 1, 1),
        (2, 5, 12, 12, 3, 3, 1, 2, 2, 1),
        (1, 3, 15, 14, 4, 7, 2, 3, 1, 1),
        (2, 4, 9, 10, 6, 3, 1, 4, 4, 2),
        (1, 4, 9, 7, 4, 3, 2, 1, 1, 4),
        (1, 3, 5, 6, 2, 1, 1, 1, 1, 1),
        (2, 8, 6, 6, 8, 1, 1, 0, 1, 1),
    ];
    for (ci, &(n, c, h, w, o, k, s, p, d, g)) in cases.iter().enumerate() {
        let cs = ConvCase {
            n,
            c,
            h,
            w,
            o,
            k,
            s,
            p,
            d,
            g,
        };
        let xv = values(n * c * h * w, 1 + ci as u64);
        let wv = values(o * (c / g) * k * k, 100 + ci as u64);
        let bv = values(o, 200 + ci as u64);
        let (y_ref, dx_ref, dw_ref, db_ref, (ho, wo)) = {
            let r = values(n * o * 64 * 64, 300 + ci as u64);
            // r is indexed with the true output size below; compute it first.
            let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
            let wo = (w + 2 * p - d * (k - 1) - 1) / s + 1;
            let r = &r[..n * o * ho * wo];
            naive_conv(&cs, &xv, &wv, r)
        };
        let r = values(n * o * 64 * 64, 300 + ci as u64)[..n * o * ho * wo].to_vec();
        let x = Var::from_tensor(&t32(&xv, &[n, c, h, w])).unwrap();
        let wt = Var::from_tensor(&t32(&wv, &[o, c / g, k, k])).unwrap();
        let b = Var::from_tensor(&t32(&bv, &[o])).unwrap();
        let params = Conv2dParams {
            stride: s,
            padding: p,
            dilation: d,
            groups: g,
        };
        let y = ops::conv2d(
            x.as_tensor(),
            wt.as_tensor(),
            Some(b.as_tensor()),
            params,
            Activation::None,
        )
        .unwrap();
        assert_eq!(y.dims(), &[n, o, ho, wo], "case {ci}");
        let y_want: Vec<f64> = y_ref
            .iter()
            .enumerate()
            .map(|(i, v)| v + bv[(i / (ho * wo)) % o])
            .collect();
        assert_close(&format!("case {ci} y"), &vec_of(&y), &y_want, 1e-5);
        let loss = (&y * t32(&r, &[n, o, ho, wo])).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gx = vec_of(grads.get(x.as_tensor()).unwrap());
        let gw = vec_of(grads.get(wt.as_tensor()).unwrap());
        let gb = vec_of(grads.get(b.as_tensor()).unwrap());
        assert_close(&format!("case {ci} dx"), &gx, &dx_ref, 1e-5);
        assert_close(&format!("case {ci} dw"), &gw, &dw_ref, 1e-5);
        assert_close(&format!("case {ci} db"), &gb, &db_ref, 1e-5);
        // The untracked path gives the same forward values.
        let y0 = ops::conv2d(
            &x.as_tensor().detach(),
            &wt.as_tensor().detach(),
            Some(&b.as_tensor().detach()),
            params,
            Activation::None,
        )
        .unwrap();
        assert_close(
            &format!("case {ci} y untracked"),
            &vec_of(&y0),
            &vec_of(&y),
            1e-6,
        );
    }
}

#[test]
fn conv2d_with_activation_backpropagates_through_relu() {
    let x = Var::from_tensor(&t32(&values(2 * 3 * 6 * 6, 7), &[2, 3, 6, 6])).unwrap();
    let w = Var::from_tensor(&t32(&values(4 * 3 * 9, 8), &[4, 3, 3, 3])).unwrap();
    let p = Conv2dParams {
        padding: 1,
        ..Default::default()
    };
    let y = ops::conv2d(x.as_tensor(), w.as_tensor(), None, p, Activation::Relu).unwrap();
    let pre = ops::conv2d(x.as_tensor(), w.as_tensor(), None, p, Activation::None).unwrap();
    assert_close("relu", &vec_of(&y), &vec_of(&pre.relu().unwrap()), 0.0);
    let g1 = y.sum_all().unwrap().backward().unwrap();
    let g2 = pre.relu().unwrap().sum_all().unwrap().backward().unwrap();
    assert_close(
        "relu dw",
        &vec_of(g1.get(w.as_tensor()).unwrap()),
        &vec_of(g2.get(w.as_tensor()).unwrap()),
        0.0,
    );
    // add_act on tracked tensors is differentiable too.
    let z = ops::add_act(&y, &pre, Activation::Relu).unwrap();
    let g = z.sum_all().unwrap().backward().unwrap();
    assert!(g.get(x.as_tensor()).is_some());
}

/// Central finite differences of `f` (a scalar function of x) in f64.
fn finite_diff(x: &[f64], shape: &[usize], f: &dyn Fn(&Tensor) -> f64) -> Vec<f64> {
    let eps = 1e-6;
    (0..x.len())
        .map(|i| {
            let mut a = x.to_vec();
            let mut b = x.to_vec();
            a[i] += eps;
            b[i] -= eps;
            // As variables, so that the ops take their tracked (composed, f64) paths.
            let va = Var::from_tensor(&t64(&a, shape)).unwrap();
            let vb = Var::from_tensor(&t64(&b, shape)).unwrap();
            (f(va.as_tensor()) - f(vb.as_tensor())) / (2.0 * eps)
        })
        .collect()
}

fn check_composed(what: &str, shape: &[usize], out_elems: usize, op: &dyn Fn(&Tensor) -> Tensor) {
    let xv = values(shape.iter().product(), 11);
    let rv = values(out_elems, 12);
    let loss = |x: &Tensor| -> Tensor {
        let y = op(x);
        let r = t64(&rv, y.dims());
        (y * r).unwrap().sum_all().unwrap()
    };
    let x = Var::from_tensor(&t64(&xv, shape)).unwrap();
    let g = loss(x.as_tensor()).backward().unwrap();
    let got = vec_of(g.get(x.as_tensor()).unwrap());
    let fd = finite_diff(&xv, shape, &|t| loss(t).to_scalar::<f64>().unwrap());
    assert_close(what, &got, &fd, 1e-7);
}

/// The f32 CPU custom op's input gradient equals the f64 composed path's (checked against
/// finite differences by [`check_composed`]) for the same input and output weights.
fn check_custom_f32(what: &str, shape: &[usize], out_elems: usize, op: &dyn Fn(&Tensor) -> Tensor) {
    let xv = values(shape.iter().product(), 21);
    let rv = values(out_elems, 22);
    let grad = |x: &Tensor, f32: bool| -> Vec<f64> {
        let y = op(x);
        let r = if f32 {
            t32(&rv, y.dims())
        } else {
            t64(&rv, y.dims())
        };
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        vec_of(g.get(x).unwrap())
    };
    let x32 = Var::from_tensor(&t32(&xv, shape)).unwrap();
    let x64 = Var::from_tensor(&t64(&xv, shape)).unwrap();
    let (g32, g64) = (grad(x32.as_tensor(), true), grad(x64.as_tensor(), false));
    assert_close(what, &g32, &g64, 1e-6);
}

#[test]
fn resize_bilinear_tracked_path_gradient_and_values() {
    for (h, w, oh, ow, ac) in [
        (4, 5, 9, 7, false),
        (4, 5, 9, 7, true),
        (8, 6, 3, 4, false),
        (5, 5, 5, 5, false),
        (3, 4, 1, 1, true),
    ] {
        let shape = [2, 3, h, w];
        check_custom_f32(
            &format!("f32 resize gradient {h}x{w}->{oh}x{ow} ac={ac}"),
            &shape,
            2 * 3 * oh * ow,
            &|x| ops::resize_bilinear(x, (oh, ow), ac).unwrap(),
        );
        check_composed(
            &format!("resize {h}x{w}->{oh}x{ow} ac={ac}"),
            &shape,
            2 * 3 * oh * ow,
            &|x| ops::resize_bilinear(x, (oh, ow), ac).unwrap(),
        );
        // The matmul path equals the CPU kernel.
        let x = t32(&values(2 * 3 * h * w, 5), &shape);
        let k = ops::resize_bilinear(&x, (oh, ow), ac).unwrap();
        let m = ops::resize_bilinear_matmul(&x, (oh, ow), ac).unwrap();
        assert_close("resize values", &vec_of(&m), &vec_of(&k), 1e-6);
        let xv = Var::from_tensor(&x).unwrap();
        let t = ops::resize_bilinear(xv.as_tensor(), (oh, ow), ac).unwrap();
        assert_eq!(vec_of(&t), vec_of(&k), "tracked resize values");
    }
}

#[test]
fn adaptive_avg_pool_tracked_path_gradient_and_values() {
    for (h, w, oh, ow) in [(7, 5, 3, 2), (6, 6, 6, 6), (4, 9, 1, 1), (3, 2, 6, 6)] {
        let shape = [2, 2, h, w];
        check_custom_f32(
            &format!("f32 adaptive pool gradient {h}x{w}->{oh}x{ow}"),
            &shape,
            2 * 2 * oh * ow,
            &|x| ops::adaptive_avg_pool2d(x, (oh, ow)).unwrap(),
        );
        check_composed(
            &format!("adaptive pool {h}x{w}->{oh}x{ow}"),
            &shape,
            2 * 2 * oh * ow,
            &|x| ops::adaptive_avg_pool2d(x, (oh, ow)).unwrap(),
        );
        let x = t32(&values(4 * h * w, 9), &shape);
        let k = ops::adaptive_avg_pool2d(&x, (oh, ow)).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let t = ops::adaptive_avg_pool2d(xv.as_tensor(), (oh, ow)).unwrap();
        assert_eq!(vec_of(&t), vec_of(&k), "tracked pool values");
    }
}

#[test]
fn pooling_backward_routes_like_pytorch() {
    // Ties (as after a ReLU) go to the first maximum of the window, as in PyTorch.
    let x = t32(
        &[
            0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0,
        ],
        &[1, 1, 4, 4],
    );
    let xv = Var::from_tensor(&x).unwrap();
    let y = ops::max_pool2d(xv.as_tensor(), 3, 2, 1, false).unwrap();
    assert_eq!(vec_of(&y), vec![0.0, 2.0, 0.0, 3.0]);
    let r = t32(&[1.0, 10.0, 100.0, 1000.0], &[1, 1, 2, 2]);
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = vec_of(g.get(xv.as_tensor()).unwrap());
    let mut want = vec![0.0; 16];
    want[0] = 1.0; // window (0, 0) (rows 0..2, cols 0..2): all zero -> its first element
    want[6] = 10.0; // window (0, 1): the first of the two 2.0s, at (1, 2)
    want[4] = 100.0; // window (1, 0) (rows 1..4, cols 0..2): all zero -> (1, 0)
    want[11] = 1000.0;
    assert_eq!(gx, want);

    // Average pooling (ceil mode, count_include_pad false): against a naive definition.
    let (h, w) = (5usize, 7usize);
    let xv = values(2 * h * w, 21);
    let x = Var::from_tensor(&t32(&xv, &[1, 2, h, w])).unwrap();
    let y = ops::avg_pool2d(x.as_tensor(), 2, 2, 0, true, false).unwrap();
    let (oh, ow) = (y.dims()[2], y.dims()[3]);
    let rv = values(2 * oh * ow, 22);
    let g = (&y * t32(&rv, y.dims()))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = vec_of(g.get(x.as_tensor()).unwrap());
    let mut want = vec![0f64; 2 * h * w];
    for c in 0..2 {
        for i in 0..oh {
            for j in 0..ow {
                let (r0, r1) = (2 * i, (2 * i + 2).min(h));
                let (c0, c1) = (2 * j, (2 * j + 2).min(w));
                let div = ((r1 - r0) * (c1 - c0)) as f64;
                for r in r0..r1 {
                    for cc in c0..c1 {
                        want[(c * h + r) * w + cc] += rv[(c * oh + i) * ow + j] / div;
                    }
                }
            }
        }
    }
    assert_close("avg pool dx", &gx, &want, 1e-6);
}

#[test]
fn batchnorm_training_updates_running_stats_like_pytorch() {
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = ConvModuleConfig::new(2, 3, 1);
    let m = ConvModule::new(&cfg, vb.clone()).unwrap();
    // Weights: identity-like 1x1 conv; BN gamma 1, beta 0, running var 1.
    {
        let data = vm.data().lock().unwrap();
        let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev)
            .unwrap()
            .reshape((3, 2, 1, 1))
            .unwrap();
        data["conv.weight"].set(&w).unwrap();
        data["bn.weight"]
            .set(&Tensor::ones(3, DType::F32, &dev).unwrap())
            .unwrap();
        data["bn.running_var"]
            .set(&Tensor::ones(3, DType::F32, &dev).unwrap())
            .unwrap();
    }
    let xv = values(2 * 2 * 3 * 3, 31);
    let x = t32(&xv, &[2, 2, 3, 3]);
    let y = m.forward_t(&x, true).unwrap();
    assert_eq!(y.dims(), &[2, 3, 3, 3]);
    // Expected: channel values of the conv output.
    let chan = |k: usize| -> Vec<f64> {
        let mut v = Vec::new();
        for n in 0..2 {
            for p in 0..9 {
                let a = xv[(n * 2) * 9 + p];
                let b = xv[(n * 2 + 1) * 9 + p];
                v.push(match k {
                    0 => a,
                    1 => b,
                    _ => a + b,
                });
            }
        }
        v
    };
    let data = vm.data().lock().unwrap();
    let rm = vec_of(data["bn.running_mean"].as_tensor());
    let rv = vec_of(data["bn.running_var"].as_tensor());
    for k in 0..3 {
        let v = chan(k);
        let nn = v.len() as f64;
        let mean = v.iter().sum::<f64>() / nn;
        let var_unbiased = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / (nn - 1.0);
        assert!(
            (rm[k] - 0.1 * mean).abs() < 1e-6,
            "mean {k}: {} vs {}",
            rm[k],
            0.1 * mean
        );
        let want = 0.9 + 0.1 * var_unbiased;
        assert!((rv[k] - want).abs() < 1e-6, "var {k}: {} vs {want}", rv[k]);
    }
}

/// Gradients of `sum(op(inputs) * r)` with respect to every input (all `Var`s, f32).
fn grads_of(inputs: &[Var], out: &Tensor) -> Vec<Vec<f64>> {
    let r = t32(&values(out.elem_count(), 31), out.dims());
    let g = (out * r).unwrap().sum_all().unwrap().backward().unwrap();
    inputs
        .iter()
        .map(|v| vec_of(g.get(v.as_tensor()).unwrap()))
        .collect()
}

#[test]
fn conv2d_cat_equals_concatenating_then_convolving() {
    // (ca, cb, o, h, w, k, stride, padding, dilation): Winograd-shaped, strided, dilated, 1x1,
    // and halves of a 1024-channel input (the whole takes the Winograd weight gradient, the
    // halves im2col).
    let cases = [
        (3, 5, 4, 9, 7, 3, 1, 1, 1),
        (4, 2, 3, 8, 9, 3, 2, 1, 1),
        (2, 3, 2, 9, 9, 3, 1, 2, 2),
        (6, 1, 5, 5, 6, 1, 1, 0, 1),
        (512, 512, 8, 6, 6, 3, 1, 1, 1),
    ];
    for (ca, cb, o, h, w, k, s, p, d) in cases {
        let what = format!("conv2d_cat {ca}+{cb}->{o} k{k} s{s} p{p} d{d}");
        let params = Conv2dParams {
            stride: s,
            padding: p,
            dilation: d,
            groups: 1,
        };
        let a = Var::from_tensor(&t32(&values(2 * ca * h * w, 1), &[2, ca, h, w])).unwrap();
        let b = Var::from_tensor(&t32(&values(2 * cb * h * w, 2), &[2, cb, h, w])).unwrap();
        let wt =
            Var::from_tensor(&t32(&values(o * (ca + cb) * k * k, 3), &[o, ca + cb, k, k])).unwrap();
        let bias = Var::from_tensor(&t32(&values(o, 4), &[o])).unwrap();
        let vars = [a.clone(), b.clone(), wt.clone(), bias.clone()];
        let (at, bt, wtt, bb) = (
            a.as_tensor(),
            b.as_tensor(),
            wt.as_tensor(),
            bias.as_tensor(),
        );
        let y = ops::conv2d_cat(at, bt, wtt, Some(bb), params, Activation::Relu).unwrap();
        let cat = Tensor::cat(&[at, bt], 1).unwrap();
        let want = ops::conv2d(&cat, wtt, Some(bb), params, Activation::Relu).unwrap();
        assert_eq!(vec_of(&y), vec_of(&want), "{what}: values");
        let (got, exp) = (grads_of(&vars, &y), grads_of(&vars, &want));
        for (i, name) in ["da", "db", "dw", "dbias"].iter().enumerate() {
            assert_close(&format!("{what}: {name}"), &got[i], &exp[i], 1e-5);
        }
        // Without gradients it is the concatenation's convolution.
        let (a0, b0) = (at.detach(), bt.detach());
        let y0 = ops::conv2d_cat(&a0, &b0, &wtt.detach(), None, params, Activation::None).unwrap();
        let cat0 = Tensor::cat(&[&a0, &b0], 1).unwrap();
        let want0 = ops::conv2d(&cat0, &wtt.detach(), None, params, Activation::None).unwrap();
        assert_eq!(vec_of(&y0), vec_of(&want0), "{what}: untracked values");
    }
    let a = Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((1, 2, 4, 5), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((1, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
        dilation: 1,
        groups: 1,
    };
    assert!(ops::conv2d_cat(&a, &b, &w, None, p, Activation::None).is_err());
}

#[test]
fn resize_bilinear_cat_equals_resizing_then_concatenating() {
    for ac in [false, true] {
        let shapes = [[2, 3, 1, 1], [2, 2, 2, 2], [2, 4, 3, 5], [2, 1, 6, 6]];
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Var::from_tensor(&t32(&values(s.iter().product(), 40 + i as u64), s)))
            .collect::<Result<_, _>>()
            .unwrap();
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = ops::resize_bilinear_cat(&xs, (7, 9), ac).unwrap();
        let parts: Vec<Tensor> = xs
            .iter()
            .map(|x| ops::resize_bilinear(x, (7, 9), ac).unwrap())
            .collect();
        let want = Tensor::cat(&parts, 1).unwrap();
        assert_eq!(y.dims(), [2, 10, 7, 9]);
        assert_eq!(vec_of(&y), vec_of(&want), "values, align_corners {ac}");
        let (got, exp) = (grads_of(&vars, &y), grads_of(&vars, &want));
        for (i, (g, e)) in got.iter().zip(&exp).enumerate() {
            assert_eq!(g, e, "gradient of map {i}, align_corners {ac}");
        }
        let detached: Vec<Tensor> = xs.iter().map(Tensor::detach).collect();
        let y0 = ops::resize_bilinear_cat(&detached, (7, 9), ac).unwrap();
        assert_eq!(vec_of(&y0), vec_of(&want), "untracked values");
    }
    assert!(ops::resize_bilinear_cat(&[], (2, 2), false).is_err());
}
