//! Every kernel, on its AVX2 and its portable path, against a naive f64 convolution.

use super::act::Simd;
use super::{
    depthwise, dilated, gemm_conv, grad, im2col, run_kernel, winograd, winograd_grad, Activation,
    Geometry,
};

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn geometry(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    groups: usize,
) -> Geometry {
    let span = d * (k - 1) + 1;
    Geometry {
        n,
        c,
        h,
        w,
        o,
        kh: k,
        kw: k,
        ho: (h + 2 * p - span) / s + 1,
        wo: (w + 2 * p - span) / s + 1,
        stride: s,
        padding: p,
        dilation: d,
        groups,
    }
}

fn naive(x: &[f32], w: &[f32], b: &[f32], g: &Geometry) -> Vec<f32> {
    let (cg, og) = (g.c / g.groups, g.o / g.groups);
    let mut out = vec![0f32; g.n * g.o * g.ho * g.wo];
    for n in 0..g.n {
        for o in 0..g.o {
            let gi = o / og;
            for ho in 0..g.ho {
                for wo in 0..g.wo {
                    let mut acc = b[o] as f64;
                    for ci in 0..cg {
                        let c = gi * cg + ci;
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let h =
                                    (ho * g.stride + i * g.dilation) as isize - g.padding as isize;
                                let ww =
                                    (wo * g.stride + j * g.dilation) as isize - g.padding as isize;
                                if h >= 0 && ww >= 0 && (h as usize) < g.h && (ww as usize) < g.w {
                                    let xv =
                                        x[((n * g.c + c) * g.h + h as usize) * g.w + ww as usize];
                                    let wv = w[((o * cg + ci) * g.kh + i) * g.kw + j];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                    }
                    out[((n * g.o + o) * g.ho + ho) * g.wo + wo] = acc.max(0.0) as f32;
                }
            }
        }
    }
    out
}

fn check(
    g: &Geometry,
    kernel: impl Fn(&[f32], &[f32], Option<&[f32]>, &Geometry, Activation) -> Vec<f32>,
) {
    check_simds(g, &[Simd::detect()], |x, w, b, g, a, _| {
        kernel(x, w, b, g, a)
    });
}

/// [`check`] for each of `simds`, the naive reference computed once.
fn check_simds(
    g: &Geometry,
    simds: &[Simd],
    kernel: impl Fn(&[f32], &[f32], Option<&[f32]>, &Geometry, Activation, Simd) -> Vec<f32>,
) {
    let x = values(g.n * g.c * g.h * g.w, 1);
    let w = values(g.o * (g.c / g.groups) * g.kh * g.kw, 2);
    let b = values(g.o, 3);
    let want = naive(&x, &w, &b, g);
    for &simd in simds {
        compare(
            g,
            &kernel(&x, &w, Some(&b), g, Activation::Relu, simd),
            &want,
        );
    }
}

fn compare(g: &Geometry, got: &[f32], want: &[f32]) {
    compare_tol(g, got, want, 1e-4);
}

/// Asserts `max |got - want| <= tol * max(1, max |want|)`.
fn compare_tol(g: &Geometry, got: &[f32], want: &[f32], tol: f32) {
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= tol * scale, "{g:?}: max err {err} (scale {scale})");
}

fn simds() -> Vec<Simd> {
    vec![Simd::portable(), Simd::avx2_only(), Simd::detect()]
}

#[test]
fn im2col_matches_naive() {
    for simd in simds() {
        for g in [
            geometry(2, 5, 9, 11, 7, 3, 1, 1, 1, 1),
            geometry(1, 6, 13, 10, 8, 3, 2, 2, 2, 2),
            geometry(1, 3, 20, 21, 13, 7, 2, 3, 1, 1),
            geometry(1, 300, 6, 7, 9, 1, 1, 0, 1, 1),
            geometry(1, 40, 17, 5, 20, 3, 1, 1, 1, 1),
            // Above `ROWS_MAX_PIXELS`: packed weights on AVX2 too.
            geometry(1, 8, 48, 50, 10, 3, 1, 1, 1, 1),
            geometry(1, 20, 50, 45, 13, 1, 1, 0, 1, 1),
        ] {
            check(&g, |x, w, b, g, a| {
                im2col::conv_im2col(x, &im2col::pack_weights(w, None, g, simd), b, g, a, simd)
            });
        }
    }
}

/// On AVX2 + FMA (AVX-512F included), im2col reads the weights in place for outputs of up to
/// `ROWS_MAX_PIXELS` pixels and packs them above; without AVX2 it always packs.
#[test]
fn im2col_reads_small_outputs_in_place() {
    let small = geometry(2, 8, 32, 32, 16, 3, 1, 1, 1, 1);
    let large = geometry(2, 8, 33, 32, 16, 3, 1, 1, 1, 1);
    assert_eq!(small.n * small.ho * small.wo, 2048);
    let w = values(16 * 8 * 9, 2);
    for simd in simds() {
        let rows = |g: &Geometry| {
            !matches!(
                im2col::pack_weights(&w, None, g, simd),
                im2col::ImWeights::Packed(_)
            )
        };
        assert_eq!(rows(&small), simd.avx2(), "{simd:?}");
        assert!(!rows(&large), "{simd:?}");
    }
}

#[test]
fn winograd_matches_naive() {
    for g in [
        geometry(1, 16, 35, 37, 16, 3, 1, 1, 1, 1),
        geometry(2, 20, 19, 18, 22, 3, 1, 2, 2, 1),
        geometry(1, 300, 24, 40, 17, 3, 1, 0, 3, 1),
        // PSPNet's bottleneck depth (4096 input channels), O x C above 512 x 512.
        geometry(1, 4096, 24, 24, 72, 3, 1, 1, 1, 1),
    ] {
        assert!(winograd::applies(&g), "{g:?}");
        check_simds(&g, &simds(), |x, w, b, g, a, simd| {
            winograd::conv_winograd(x, &winograd::pack_weights(w, None, g), b, g, a, simd)
        });
    }
}

/// Dilated 3x3 convolutions whose outer taps mostly read padding: the per-tap GEMMs over the
/// rectangles where each tap is valid, against the naive convolution. Covers several images,
/// padding other than the rate, channels past one depth block, output channels off the tile
/// size, and kernels wider than the padded input's valid part (some pixels read no input).
#[test]
fn dilated_taps_match_naive() {
    for g in [
        geometry(1, 16, 20, 20, 16, 3, 1, 8, 8, 1),
        geometry(2, 20, 19, 23, 22, 3, 1, 10, 9, 1),
        geometry(1, 300, 17, 14, 17, 3, 1, 12, 12, 1),
        geometry(1, 24, 9, 30, 19, 3, 1, 20, 20, 1),
        geometry(1, 16, 40, 40, 64, 3, 1, 24, 24, 1),
        geometry(1, 32, 64, 64, 48, 3, 1, 36, 36, 1),
    ] {
        assert!(dilated::applies(&g, Simd::avx2_only()), "{g:?}");
        if !Simd::detect().avx2() {
            continue;
        }
        check(&g, |x, w, b, g, a| {
            let simd = Simd::detect();
            dilated::conv_taps(x, &dilated::pack_weights(w, None, g), b, g, a, simd)
        });
    }
    // Small rates keep Winograd: most taps read the input.
    for d in [2, 6, 12, 18] {
        let g = geometry(1, 64, 64, 64, 64, 3, 1, d, d, 1);
        assert!(!dilated::applies(&g, Simd::avx2_only()), "{g:?}");
    }
    let g = geometry(1, 64, 64, 64, 64, 3, 1, 24, 24, 1);
    assert!(!dilated::applies(&g, Simd::portable()), "{g:?}");
}

#[test]
fn depthwise_matches_naive() {
    for simd in simds() {
        for g in [
            geometry(2, 6, 9, 40, 6, 3, 1, 4, 4, 6),
            geometry(1, 4, 11, 13, 8, 3, 2, 1, 1, 4),
            geometry(1, 5, 7, 70, 5, 5, 1, 2, 1, 5),
        ] {
            check(&g, |x, w, b, g, a| {
                depthwise::depthwise(x, w, b, g, a, simd)
            });
        }
    }
}

#[test]
fn gemm_crate_path_matches_naive() {
    for g in [
        geometry(2, 5, 9, 11, 7, 3, 1, 1, 1, 1),
        geometry(1, 6, 13, 10, 8, 3, 2, 2, 2, 2),
        geometry(1, 64, 6, 7, 9, 1, 1, 0, 1, 1),
        geometry(1, 32, 40, 40, 16, 1, 2, 0, 1, 1),
    ] {
        check(&g, gemm_conv::conv_gemm);
    }
}

/// Every kernel with a per-output-channel weight scale (an inference BatchNorm applied while
/// packing, or on a scaled copy) against the naive convolution of the scaled weights.
#[test]
fn scaled_weights_match_naive_of_scaled_copy() {
    for simd in simds() {
        for g in [
            geometry(2, 5, 9, 11, 7, 3, 1, 1, 1, 1),
            geometry(1, 6, 13, 10, 8, 3, 2, 2, 2, 2),
            geometry(1, 300, 6, 7, 9, 1, 1, 0, 1, 1),
            geometry(1, 16, 35, 37, 16, 3, 1, 1, 1, 1),
            geometry(1, 300, 24, 40, 17, 3, 1, 0, 3, 1),
            geometry(2, 6, 9, 40, 6, 3, 1, 4, 4, 6),
            geometry(1, 4, 11, 13, 8, 3, 2, 1, 1, 4),
            geometry(1, 20, 50, 45, 13, 1, 1, 0, 1, 1),
            // The dilated per-tap path.
            geometry(2, 20, 19, 23, 22, 3, 1, 10, 9, 1),
        ] {
            let x = values(g.n * g.c * g.h * g.w, 1);
            let w = values(g.o * (g.c / g.groups) * g.kh * g.kw, 2);
            let b = values(g.o, 3);
            let scale: Vec<f64> = values(g.o, 4)
                .iter()
                .map(|&v| 0.25 + 2.0 * v.abs() as f64)
                .collect();
            let per_out = w.len() / g.o;
            let ws: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, &v)| (v as f64 * scale[i / per_out]) as f32)
                .collect();
            let want = naive(&x, &ws, &b, &g);
            let got = run_kernel(&x, &w, Some(&scale), Some(&b), &g, Activation::Relu, simd);
            let top = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                err <= 1e-5 * top,
                "{g:?} {simd:?}: max err {err} (scale {top})"
            );
        }
    }
}

/// The Winograd weight gradient against the im2col GEMMs, over padding, dilation, odd sizes,
/// several images and more tiles than one chunk.
#[test]
fn winograd_weight_grad_matches_im2col() {
    for g in [
        geometry(1, 16, 35, 37, 16, 3, 1, 1, 1, 1),
        geometry(2, 20, 19, 18, 22, 3, 1, 2, 2, 1),
        geometry(1, 300, 24, 40, 17, 3, 1, 0, 3, 1),
        geometry(2, 16, 70, 71, 16, 3, 1, 1, 1, 1),
        geometry(2, 24, 33, 29, 40, 3, 1, 4, 4, 1),
        geometry(1, 1024, 24, 24, 24, 3, 1, 1, 1, 1),
    ] {
        assert!(winograd::applies(&g), "{g:?}");
        let x = values(g.n * g.c * g.h * g.w, 4);
        let dy = values(g.n * g.o * g.ho * g.wo, 5);
        let want = grad::weight_grad_im2col(&x, &dy, &g);
        let got = winograd_grad::weight_grad_winograd(&x, &dy, &g);
        compare_tol(&g, &got, &want, 1e-5);
    }
}

/// The direct (padded-plane) weight gradient against the im2col GEMMs: 3x3 and 7x7, padding
/// (none, with a 4 KiB plane), dilation, channel counts that fill no whole micro-panel, a
/// single micro-panel, taps that fill no whole task; 1x1, stride 2 and tiny maps are left to
/// im2col. Runs the AVX-512F kernel where the CPU has it and the AVX2 one (at most
/// `AVX2_MAX_CHANNELS` = 128 output channels and padded rows at most 5/4 of the output's
/// width; one geometry has more channels, one wider rows) where it has AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[test]
fn direct_weight_grad_matches_im2col() {
    use super::wgrad_direct;
    let mut checked = 0;
    for simd in [Simd::detect(), Simd::avx2_only()] {
        for g in [
            geometry(2, 16, 35, 37, 16, 3, 1, 1, 1, 1),
            geometry(4, 5, 19, 18, 7, 3, 1, 0, 1, 1),
            geometry(1, 3, 40, 41, 33, 7, 1, 3, 1, 1),
            geometry(2, 64, 24, 24, 40, 1, 1, 0, 1, 1),
            geometry(2, 9, 32, 32, 20, 3, 1, 0, 1, 1),
            geometry(2, 24, 33, 29, 40, 3, 1, 4, 4, 1),
            geometry(2, 12, 21, 41, 24, 3, 1, 4, 4, 1),
            geometry(1, 200, 90, 90, 17, 3, 1, 1, 1, 1),
            geometry(2, 8, 31, 30, 70, 3, 1, 2, 2, 1),
            geometry(1, 6, 20, 20, 8, 3, 2, 1, 1, 1),
            geometry(1, 8, 6, 6, 8, 3, 1, 1, 1, 1),
            geometry(2, 16, 24, 24, 128, 3, 1, 1, 1, 1),
            geometry(1, 8, 40, 40, 136, 3, 1, 1, 1, 1),
        ] {
            let big = g.n * g.ho * (g.w + 2 * g.padding) >= 1024;
            // Padded rows at most 5/4 of the output's width on AVX2: the dilation-4 geometry
            // 29 wide (37 / 29 = 1.28) stays on im2col there, the one 41 wide (49 / 41) not.
            let narrow = 4 * (g.w + 2 * g.padding) <= 5 * g.wo;
            let kernel =
                simd.avx512() || (simd.avx2() && g.o <= wgrad_direct::AVX2_MAX_CHANNELS && narrow);
            let direct = kernel && g.stride == 1 && g.kh > 1 && big;
            assert_eq!(wgrad_direct::applies(&g, simd), direct, "{g:?}");
            if !direct {
                continue;
            }
            let x = values(g.n * g.c * g.h * g.w, 4);
            let dy = values(g.n * g.o * g.ho * g.wo, 5);
            let want = grad::weight_grad_im2col(&x, &dy, &g);
            let got = wgrad_direct::weight_grad_direct(&x, &dy, &g, simd);
            compare_tol(&g, &got, &want, 1e-5);
            checked += 1;
        }
    }
    // Ten geometries qualify for the AVX-512F kernel, eight (at most 128 output channels,
    // padded rows at most 5/4 of the output's) for the AVX2 one.
    let want = match (Simd::detect().avx512(), Simd::detect().avx2()) {
        (true, _) => 18,
        (false, true) => 16,
        (false, false) => 0,
    };
    assert_eq!(checked, want);
}

/// `dL/dw` from its definition, in f64.
fn naive_weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (cg, og) = (g.c / g.groups, g.o / g.groups);
    let mut dw = vec![0f32; g.o * cg * g.kh * g.kw];
    for o in 0..g.o {
        let gi = o / og;
        for c in 0..cg {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let mut s = 0f64;
                    for n in 0..g.n {
                        for y in 0..g.ho {
                            for xo in 0..g.wo {
                                let hi =
                                    (y * g.stride + i * g.dilation) as isize - g.padding as isize;
                                let wi =
                                    (xo * g.stride + j * g.dilation) as isize - g.padding as isize;
                                if hi < 0 || wi < 0 || hi >= g.h as isize || wi >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((n * g.c + gi * cg + c) * g.h + hi as usize) * g.w
                                    + wi as usize];
                                let gv = dy[((n * g.o + o) * g.ho + y) * g.wo + xo];
                                s += xv as f64 * gv as f64;
                            }
                        }
                    }
                    dw[((o * cg + c) * g.kh + i) * g.kw + j] = s as f32;
                }
            }
        }
    }
    dw
}

/// The im2col weight gradient against its definition: pointwise (the input read in place),
/// pointwise with stride 2, 3x3 with padding, grouped.
#[test]
fn im2col_weight_grad_matches_naive() {
    for g in [
        geometry(2, 40, 13, 11, 24, 1, 1, 0, 1, 1),
        geometry(2, 12, 13, 11, 10, 1, 2, 0, 1, 1),
        geometry(3, 6, 9, 10, 7, 3, 1, 1, 1, 1),
        geometry(2, 8, 9, 9, 12, 3, 2, 1, 1, 4),
    ] {
        let x = values(g.n * g.c * g.h * g.w, 6);
        let dy = values(g.n * g.o * g.ho * g.wo, 7);
        let want = naive_weight_grad(&x, &dy, &g);
        compare_tol(&g, &grad::weight_grad_im2col(&x, &dy, &g), &want, 1e-5);
    }
}

/// What the direct weight gradient buys over the im2col GEMMs on this CPU, on the 3x3 layers
/// of the training bench cases (run with `cargo test --release -p segkit-core
/// timing_of_the_weight_gradient -- --ignored --nocapture`).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "timing, not a check"]
fn timing_of_the_weight_gradient() {
    use super::wgrad_direct;
    let simd = Simd::detect();
    // (name, [batch, channels in, map side, channels out, dilation = padding]), 3x3, stride 1.
    let layers = [
        ("demo 128->128 16x16 b8", [8, 128, 16, 128, 1]),
        ("demo 128->128 16x16 d4 b8", [8, 128, 16, 128, 4]),
        ("demo 64->64 16x16 b8", [8, 64, 16, 64, 1]),
        ("demo 16->16 128x128 b8", [8, 16, 128, 16, 1]),
        ("demo 32->32 64x64 b8", [8, 32, 64, 32, 1]),
        ("r50 64->64 128x128 b2", [2, 64, 128, 64, 1]),
        ("r50 128->128 64x64 b2", [2, 128, 64, 128, 1]),
        ("d8 256->256 64x64 d2 b2", [2, 256, 64, 256, 2]),
        ("d8 512->512 64x64 d4 b2", [2, 512, 64, 512, 4]),
    ];
    for (name, [n, c, hw, o, d]) in layers {
        let g = geometry(n, c, hw, hw, o, 3, 1, d, d, 1);
        // Timed past `applies`' channel limit too: the limit comes from these figures.
        if !simd.avx2() {
            return;
        }
        let x = values(g.n * g.c * g.h * g.w, 4);
        let dy = values(g.n * g.o * g.ho * g.wo, 5);
        let best = |f: &dyn Fn() -> Vec<f32>| {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(f());
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::MAX, f64::min)
        };
        let im2col = best(&|| grad::weight_grad_im2col(&x, &dy, &g));
        let direct = best(&|| wgrad_direct::weight_grad_direct(&x, &dy, &g, simd));
        println!("{name}: im2col {im2col:.2} ms, direct {direct:.2} ms");
    }
}
