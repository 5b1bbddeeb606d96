//! Random initialisation against PyTorch's: every parameter and buffer of a module built on a
//! candle `VarMap` has the mean, standard deviation and mean |x| of the reference module's
//! initialisation (tests/parity/gen_init_stats.py: torchvision `resnet50()`, mmseg
//! `ResNetV1c` D8, `JPU`, `DAHead`, `PSPHead` after `init_weights()`).
//!
//! Tolerance, from the sample sizes: the reference statistic is averaged over `D` draws of
//! `n` elements, ours is one draw. With `s` the reference's standard deviation, the standard
//! error of the difference is
//! - mean: `s * sqrt((1 + 1/D) / n)`;
//! - standard deviation: `s * sqrt((kurtosis - 1) (1 + 1/D) / (4 n))` with the normal
//!   distribution's kurtosis 3 (the uniform's, 1.8, is smaller);
//! - mean |x|: `sqrt(s^2 - absmean^2) * sqrt((1 + 1/D) / n)`.
//!
//! A statistic passes within `Z = 6` standard errors (a false failure has probability about
//! 2e-9 per statistic, 4e-6 over the ~2000 compared). A constant (norms, biases, `Scale(0)`)
//! has `s = 0` and must match exactly. A wrong scheme fails by hundreds of standard errors:
//! PyTorch's default conv init vs Kaiming fan_out differ by 20% in std on 9.4M elements.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::FeatureSpec;
use segkit_heads::{DaHead, DaHeadConfig, PspHead, PspHeadConfig};
use segkit_necks::{Jpu, JpuConfig};

const Z: f64 = 6.0;

struct Stat {
    n: usize,
    mean: f64,
    std: f64,
    absmean: f64,
}

fn reference(module: &str) -> (BTreeMap<String, Stat>, f64) {
    let p = segkit_tests::fixture_path("init/init_stats.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let m = all[module]
        .as_object()
        .unwrap_or_else(|| panic!("no `{module}`"));
    let mut draws = 1.0;
    let stats = m
        .iter()
        .map(|(k, v)| {
            draws = v["draws"].as_f64().unwrap();
            let f = |n: &str| v[n].as_f64().unwrap();
            let s = Stat {
                n: v["n"].as_u64().unwrap() as usize,
                mean: f("mean"),
                std: f("std"),
                absmean: f("absmean"),
            };
            (k.clone(), s)
        })
        .collect();
    (stats, draws)
}

fn ours(map: &VarMap) -> BTreeMap<String, Stat> {
    let data = map.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            let x = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let n = x.len() as f64;
            let mean = x.iter().map(|&a| a as f64).sum::<f64>() / n;
            let var = x.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n;
            let absmean = x.iter().map(|&a| (a as f64).abs()).sum::<f64>() / n;
            let s = Stat {
                n: x.len(),
                mean,
                std: var.sqrt(),
                absmean,
            };
            (k.clone(), s)
        })
        .collect()
}

/// Compares every tensor; `only_reference` lists the reference keys the Rust module does not
/// have (torchvision's classifier `fc`).
fn check(module: &str, map: &VarMap, only_reference: &[&str]) {
    let (want, draws) = reference(module);
    let got = ours(map);
    let wk: BTreeSet<&str> = want.keys().map(|s| s.as_str()).collect();
    let gk: BTreeSet<&str> = got.keys().map(|s| s.as_str()).collect();
    let missing: Vec<_> = wk.difference(&gk).copied().collect();
    let extra: Vec<_> = gk.difference(&wk).collect();
    assert_eq!(missing, only_reference, "{module}: reference keys we lack");
    assert!(
        extra.is_empty(),
        "{module}: keys the reference lacks: {extra:?}"
    );
    let mut failures = Vec::new();
    let mut compared = 0;
    for (k, g) in &got {
        let w = &want[k];
        assert_eq!(g.n, w.n, "{module} {k}: element count");
        let n = w.n as f64;
        let f = 1.0 + 1.0 / draws;
        let se_mean = w.std * (f / n).sqrt();
        let se_std = w.std * ((3.0 - 1.0) * f / (4.0 * n)).sqrt();
        let se_abs = (w.std * w.std - w.absmean * w.absmean).max(0.0).sqrt() * (f / n).sqrt();
        for (what, a, b, se) in [
            ("mean", g.mean, w.mean, se_mean),
            ("std", g.std, w.std, se_std),
            ("mean|x|", g.absmean, w.absmean, se_abs),
        ] {
            compared += 1;
            // Constants: exact up to the f32 -> f64 rounding of the reference's sum.
            let tol = Z * se + 1e-9 * b.abs().max(1.0);
            if (a - b).abs() > tol {
                failures.push(format!(
                    "{k} {what}: ours {a:.6e}, PyTorch {b:.6e} (n {}, {:.1} standard errors)",
                    w.n,
                    (a - b).abs() / se.max(1e-300)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{module}: {} of {compared} statistics outside {Z} standard errors:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn var_map() -> (VarMap, VarBuilder<'static>) {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    (map, vb)
}

fn resnet50_specs() -> Vec<FeatureSpec> {
    [(256, 4), (512, 8), (1024, 8), (2048, 8)]
        .map(|(c, s)| FeatureSpec::new(c, s))
        .to_vec()
}

#[test]
fn torchvision_resnet50_starts_as_torchvisions() {
    let (map, vb) = var_map();
    ResNet::new(&ResNetConfig::torchvision(50), vb).unwrap();
    check("torchvision_resnet50", &map, &["fc.bias", "fc.weight"]);
}

#[test]
fn mmseg_resnetv1c50_d8_starts_as_mmsegs() {
    let (map, vb) = var_map();
    let cfg = ResNetConfig::mmseg_v1c(50).with_output_stride(8).unwrap();
    ResNet::new(&cfg, vb).unwrap();
    check("mmseg_resnetv1c50_d8", &map, &[]);
}

#[test]
fn jpu_starts_as_mmsegs() {
    let (map, vb) = var_map();
    let specs = [(512, 8), (1024, 16), (2048, 32)].map(|(c, s)| FeatureSpec::new(c, s));
    Jpu::new(&JpuConfig::mmseg(), &specs, vb).unwrap();
    check("mmseg_jpu", &map, &[]);
}

#[test]
fn da_head_starts_as_mmsegs() {
    let (map, vb) = var_map();
    DaHead::new(&DaHeadConfig::danet_r50_d8(19), &resnet50_specs(), vb).unwrap();
    check("mmseg_da_head", &map, &[]);
}

#[test]
fn psp_head_starts_as_mmsegs() {
    let (map, vb) = var_map();
    PspHead::new(&PspHeadConfig::pspnet_r50_d8(19), &resnet50_specs(), vb).unwrap();
    check("mmseg_psp_head", &map, &[]);
}
