//! Times segkit's `conv2d` on ResNet-like layers (median of several runs).
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p segkit-core --example conv_bench [-- --candle]
//! [--act] [NAME..]`; `--candle` also times candle's own conv2d + bias, `--act` times `activate`
//! against candle's sigmoid / GELU, `NAME` keeps the cases whose name contains it. The PyTorch
//! side is `crates/core/examples/conv_bench.py`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use segkit_core::ops::{activate, conv2d, Activation, Conv2dParams};

/// One benchmarked layer: name, input NCHW, output channels, kernel, stride, padding,
/// dilation, groups.
struct Case(
    &'static str,
    [usize; 4],
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CASES: [Case; 19] = [
    Case("3x3 512->512 @16", [1, 512, 16, 16], 512, 3, 1, 1, 1, 1),
    Case("3x3 256->256 @32", [1, 256, 32, 32], 256, 3, 1, 1, 1, 1),
    Case("3x3 128->128 @64", [1, 128, 64, 64], 128, 3, 1, 1, 1, 1),
    Case("3x3 256->256 @128", [1, 256, 128, 128], 256, 3, 1, 1, 1, 1),
    Case("1x1 1024->256 @64", [1, 1024, 64, 64], 256, 1, 1, 0, 1, 1),
    Case("3x3 s2 64->64 @256", [1, 64, 256, 256], 64, 3, 2, 1, 1, 1),
    Case("7x7 s2 3->64 @512", [1, 3, 512, 512], 64, 7, 2, 3, 1, 1),
    Case("dw3x3 d4 512 @64", [1, 512, 64, 64], 512, 3, 1, 4, 4, 512),
    Case("3x3 d2 512->512 @64", [1, 512, 64, 64], 512, 3, 1, 2, 2, 1),
    Case("1x1 256->1024 @64", [1, 256, 64, 64], 1024, 1, 1, 0, 1, 1),
    Case("1x1 1024->256 @32", [1, 1024, 32, 32], 256, 1, 1, 0, 1, 1),
    Case("1x1 2048->512 @16", [1, 2048, 16, 16], 512, 1, 1, 0, 1, 1),
    Case("1x1 512->2048 @16", [1, 512, 16, 16], 2048, 1, 1, 0, 1, 1),
    // ASPP's dilated branches (FastFCN, DeepLab-style heads) on a 64 x 64 map.
    Case(
        "3x3 d6 2048->512 @64",
        [1, 2048, 64, 64],
        512,
        3,
        1,
        6,
        6,
        1,
    ),
    Case(
        "3x3 d12 2048->512 @64",
        [1, 2048, 64, 64],
        512,
        3,
        1,
        12,
        12,
        1,
    ),
    Case(
        "3x3 d18 2048->512 @64",
        [1, 2048, 64, 64],
        512,
        3,
        1,
        18,
        18,
        1,
    ),
    Case(
        "3x3 d24 2048->512 @64",
        [1, 2048, 64, 64],
        512,
        3,
        1,
        24,
        24,
        1,
    ),
    Case(
        "3x3 d36 2048->512 @64",
        [1, 2048, 64, 64],
        512,
        3,
        1,
        36,
        36,
        1,
    ),
    // Gated-SCNN-R101's rate-36 ASPP branch at 512 x 1024 (stride 8).
    Case(
        "3x3 d36 2048->256 @64x128",
        [1, 2048, 64, 128],
        256,
        3,
        1,
        36,
        36,
        1,
    ),
];

/// CPU time of all this process's threads, in ms (Linux), for measuring on a busy machine.
fn cpu_ms() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

/// Median (or, with `SEGKIT_BENCH_MIN` set, minimum) wall time of `runs` calls after a warm-up;
/// with `SEGKIT_BENCH_CPU` set, CPU time instead of wall time.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let cpu = std::env::var_os("SEGKIT_BENCH_CPU").is_some();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let (s, c) = (Instant::now(), if cpu { cpu_ms() } else { 0.0 });
            f();
            if cpu {
                cpu_ms() - c
            } else {
                s.elapsed().as_secs_f64() * 1e3
            }
        })
        .collect();
    t.sort_by(f64::total_cmp);
    if std::env::var_os("SEGKIT_BENCH_MIN").is_some() {
        t[0]
    } else {
        t[runs / 2]
    }
}

fn main() -> segkit_core::Result<()> {
    let with_candle = std::env::args().any(|a| a == "--candle");
    // Any other argument selects the cases whose name contains it.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs = std::env::var("SEGKIT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    println!("threads {}", rayon::current_num_threads());
    for Case(name, xs, o, k, stride, padding, dilation, groups) in CASES {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, &xs, &dev)?;
        let w = Tensor::randn(0f32, 0.05, (o, xs[1] / groups, k, k), &dev)?;
        let b = Tensor::randn(0f32, 0.1, o, &dev)?;
        let p = Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
        let ours = median_ms(runs, || {
            conv2d(&x, &w, Some(&b), p, Activation::None).unwrap();
        });
        let relu = median_ms(runs, || {
            conv2d(&x, &w, Some(&b), p, Activation::Relu).unwrap();
        });
        let flops = 2.0 * (xs[1] / groups * k * k) as f64 * o as f64;
        let y = conv2d(&x, &w, Some(&b), p, Activation::None)?;
        let gflops = flops * (y.dims()[2] * y.dims()[3]) as f64 / ours / 1e6;
        print!("{name:<22} segkit {ours:8.2} ms (+relu {relu:8.2})  {gflops:6.1} GFLOP/s");
        if with_candle {
            let c = median_ms(runs.min(5), || {
                x.conv2d(&w, padding, stride, dilation, groups)
                    .unwrap()
                    .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
                    .unwrap();
            });
            print!("  candle {c:8.2} ms");
        }
        println!();
    }
    if std::env::args().any(|a| a == "--act") {
        let x = Tensor::randn(0f32, 2.0, (1, 256, 128, 128), &Device::Cpu)?;
        for (name, act) in [("sigmoid", Activation::Sigmoid), ("gelu", Activation::Gelu)] {
            let ours = median_ms(runs, || {
                activate(&x, act).unwrap();
            });
            let candle = median_ms(runs, || {
                match act {
                    Activation::Sigmoid => candle_nn::ops::sigmoid(&x),
                    _ => x.gelu_erf(),
                }
                .unwrap();
            });
            println!(
                "activate {name:<8} 1x256x128x128  segkit {ours:8.2} ms  candle {candle:8.2} ms"
            );
        }
    }
    Ok(())
}
