//! ONE whole PANet training step (fixture: tests/parity/gen_panet_train_step.py):
//! `Panet::forward_train` with a `ReplaySampler` fed the reference's recorded numpy draws, then
//! the backward pass of the sum of the five losses. Compared: each of the five losses, and the
//! gradient of EVERY trainable parameter (body `res3`..`res5` convolutions, the whole pyramid,
//! the RPN, box and mask heads: 135 tensors), every element entering the comparison (1024
//! sampled values and 1024 block projections per tensor, `segkit_tests::assert_sampled_close`);
//! the frozen parameters (stem, `res2`, every affine norm) must get no gradient.
//!
//! Oracle: a PyTorch training step WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet is not
//! installable), assembled from the other PANet generators' modules; RoIAlign (pooling and the
//! bitmap mask targets) is torchvision's own `roi_align(aligned=False)` and NMS torchvision's
//! `nms` on `+1` boxes (INDEPENDENT); gradients by autograd.
//!
//! Reduced size: a caffe ResNet with 2 bottlenecks per stage and base width 16 (depth 26,
//! C2..C5 of 64..512 channels, `freeze_at` 2), a 64-channel pyramid / RPN / RoI heads (box fc
//! 128, mask fc fusion 32 channels), 81 classes, 28x28 masks; two images (150x219 at scale
//! 4/3 and 180x232 at 1.2) in a 2 x 3 x 224 x 320 blob, 5 and 7 bitmap instances (one crowd);
//! official training settings (256 anchors and 512 RoIs per image, 2000 proposals per level)
//! except the collect, 800 instead of 2000: every RoI candidate is then sampled, so the RoI set
//! cannot depend on the order of proposals whose f32 scores tie within an ulp (see the generator).
//!
//! Tolerance: `1e-4 * max(1, |ref|)` for the losses; for the gradients see [`check_gradient`]
//! (DESIGN's 1e-4, widened only where PyTorch's own float32 error, measured against float64, is
//! larger).

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use segkit::models::panet::{Panet, PanetConfig, PanetTrainConfig, PanetTrainImage};
use segkit_core::ops::detection::{RecordedDraw, ReplaySampler};
use segkit_core::testing::{synthetic_input, synthetic_tensor};
use segkit_heads::panet::PanetRoiHeadsConfig;
use segkit_tests::sampled::{block_bounds, projections, sample_indices};
use segkit_tests::{get, load_fixture};

type Fx = HashMap<String, Tensor>;

/// (original height, width, scale) of the two images.
const IMAGES: [(usize, usize, f64); 2] = [(150, 219, 4.0 / 3.0), (180, 232, 1.2)];
const PAD: (usize, usize) = (224, 320);
const NUM_CLASSES: usize = 81;

fn i64s(f: &Fx, k: &str) -> Vec<i64> {
    get(f, k).flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// The reduced PANet of the file docs on a VarMap holding segkit-core's synthetic values.
fn model() -> (Panet, VarMap) {
    let mut c = PanetConfig::r50_fpn_2x_coco();
    c.backbone.depth = 26;
    c.backbone.base_channels = 16;
    c.fpn.out_channels = 64;
    c.roi_heads = PanetRoiHeadsConfig::panet(NUM_CLASSES);
    c.roi_heads.box_head.conv_dim = 64;
    c.roi_heads.box_head.fc_dim = 128;
    if let Some(m) = c.roi_heads.mask_head.as_mut() {
        m.dim = 64;
    }
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let m = Panet::new(&c, vb).unwrap();
    for (k, v) in vm.data().lock().unwrap().iter() {
        v.set(&synthetic_tensor(k, v.shape(), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
    }
    (m, vm)
}

/// The images' instances (bit-packed masks, numpy's `packbits` order: most significant first).
fn images(f: &Fx) -> Vec<PanetTrainImage> {
    IMAGES
        .iter()
        .enumerate()
        .map(|(i, &(h, w, s))| {
            let boxes: Vec<[f32; 4]> = get(f, &format!("img{i}.boxes"))
                .to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .map(|r| [r[0], r[1], r[2], r[3]])
                .collect();
            let k = boxes.len();
            let classes = i64s(f, &format!("img{i}.classes"));
            let crowd = get(f, &format!("img{i}.crowd")).to_vec1::<u8>().unwrap();
            let packed = get(f, &format!("img{i}.masks")).to_vec1::<u8>().unwrap();
            let bits: Vec<u8> = (0..k * h * w)
                .map(|j| (packed[j / 8] >> (7 - j % 8)) & 1)
                .collect();
            PanetTrainImage {
                boxes,
                classes: classes.iter().map(|&c| c as usize).collect(),
                crowd: crowd.iter().map(|&c| c != 0).collect(),
                masks: bits.chunks_exact(h * w).map(<[u8]>::to_vec).collect(),
                size: (h, w),
                im_info: [
                    (h as f64 * s).round() as f32,
                    (w as f64 * s).round() as f32,
                    s as f32,
                ],
            }
        })
        .collect()
}

fn replay(f: &Fx) -> ReplaySampler {
    let head = i64s(f, "draws.head");
    let pos = i64s(f, "draws.positions");
    let mut at = 0usize;
    let draws = head
        .chunks_exact(3)
        .map(|h| {
            let k = h[2] as usize;
            let positions = pos[at..at + k].iter().map(|&p| p as usize).collect();
            at += k;
            RecordedDraw {
                n: h[0] as usize,
                with_replacement: h[1] == 1,
                positions,
            }
        })
        .collect();
    assert_eq!(at, pos.len(), "every recorded position belongs to a draw");
    ReplaySampler::new(draws)
}

#[test]
fn one_training_step_matches_the_reference() {
    let f = load_fixture("panet_train_step.safetensors");
    let (m, vm) = model();
    let imgs = images(&f);
    let x = synthetic_input(
        "panet_train_step.blob",
        (IMAGES.len(), 3, PAD.0, PAD.1),
        &Device::Cpu,
    )
    .unwrap();
    let mut cfg = PanetTrainConfig::official(NUM_CLASSES);
    cfg.collect_top_n = 800;
    let mut sampler = replay(&f);
    let losses = m.forward_train(&x, &imgs, &cfg, &mut sampler).unwrap();
    assert_eq!(sampler.remaining(), 0, "every recorded draw is replayed");
    assert_eq!(losses.num_proposals, 800);
    for (name, t) in losses.named() {
        let got = f64::from(t.to_scalar::<f32>().unwrap());
        let want = get(&f, &format!("loss.{name}")).to_vec1::<f64>().unwrap()[0];
        let tol = 1e-4 * want.abs().max(1.0);
        eprintln!(
            "{name}: segkit {got:.7} reference {want:.7} |diff| {:.2e} (tol {tol:.1e})",
            (got - want).abs()
        );
        assert!((got - want).abs() <= tol, "{name}: {got} vs {want}");
    }
    let grads = losses.total().unwrap().backward().unwrap();
    let want: HashSet<String> = f
        .keys()
        .filter_map(|k| k.strip_prefix("grad.")?.strip_suffix(".seed"))
        .map(str::to_string)
        .collect();
    assert_eq!(want.len() as i64, i64s(&f, "trainable")[0]);
    let data = vm.data().lock().unwrap();
    let (mut compared, mut failed) = (0, Vec::new());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        match (grads.get(var.as_tensor()), want.contains(name)) {
            (Some(g), true) => {
                if let Err(e) = check_gradient(name, g, &f) {
                    failed.push(e);
                }
                compared += 1;
            }
            (None, false) => {}
            (Some(_), false) => panic!("{name} is frozen in the reference but has a gradient"),
            (None, true) => panic!("{name} has no gradient"),
        }
    }
    assert!(
        failed.is_empty(),
        "{} gradients differ:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert_eq!(compared, want.len(), "every reference gradient compared");
}

fn scalar(f: &Fx, k: &str) -> f64 {
    get(f, k)
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}

/// Compares a gradient with its summary (`synth.sample_outputs`: sampled values, every
/// element in one of the block projections, sum, absolute sum). Tolerances: elements (and
/// projections, `eps * min(B, 6 sqrt(B))` per block of B as `segkit_tests::sampled`)
/// `eps = max(1e-4 * max(1, max|ref|), 2 e)` and sums `max(1e-3 * max(1, sum|ref|), 2 e_sum)`,
/// where `e` / `e_sum` are how far PyTorch's OWN float32 gradient is from its float64 one
/// (`torch_f32_err`, measured by the generator on the same step). The measured reason: the
/// box / mask heads' element-wise max over levels and the ReLUs make the gradient flip where
/// two values tie within float32 rounding, so an exact float32 implementation differs from
/// another by about as much as float32 from float64 (PyTorch: up to 1.4e-4 = 1.4x DESIGN.md's
/// 1e-4 on `conv_top`'s gradient; sums up to 1e-3 relative). Returns a report or the failures.
fn check_gradient(name: &str, g: &Tensor, f: &Fx) -> Result<(), String> {
    let key = format!("grad.{name}");
    let x = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let err = get(f, &format!("torch_f32_err.{name}"))
        .to_vec1::<f64>()
        .unwrap();
    let absmax = scalar(f, &format!("{key}.absmax"));
    let eps = (1e-4 * absmax.max(1.0)).max(2.0 * err[0]);
    let seed = i64s(f, &format!("{key}.seed"))[0] as u64;
    let n = i64s(f, &format!("{key}.n"))[0] as usize;
    let vals = get(f, &format!("{key}.val")).to_vec1::<f32>().unwrap();
    let idx = sample_indices(x.len(), seed, n);
    assert_eq!(idx.len(), vals.len(), "{key}: sampled indices");
    let mut fails = Vec::new();
    let dval = idx
        .iter()
        .zip(&vals)
        .map(|(&i, &v)| (f64::from(x[i]) - f64::from(v)).abs())
        .fold(0f64, f64::max);
    if dval > eps {
        fails.push(format!("sampled |diff| {dval:e} > {eps:e}"));
    }
    let pref = get(f, &format!("{key}.proj")).to_vec1::<f32>().unwrap();
    let p = projections(&x, seed, pref.len());
    for ((lo, hi), (a, b)) in block_bounds(x.len(), pref.len())
        .into_iter()
        .zip(p.iter().zip(&pref))
    {
        let bl = (hi - lo) as f64;
        let tol = eps * bl.min(6.0 * bl.sqrt());
        if (a - f64::from(*b)).abs() > tol {
            fails.push(format!(
                "projection of block {lo}..{hi}: {a} vs {b} (tol {tol:e})"
            ));
            break;
        }
    }
    let abssum_ref = scalar(f, &format!("{key}.abssum"));
    let sum_ref = scalar(f, &format!("{key}.sum"));
    let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
    let abssum: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
    let tol_sum = (1e-3 * abssum_ref.max(1.0)).max(2.0 * err[1].max(err[2]));
    for (what, a, b) in [("sum", sum, sum_ref), ("abssum", abssum, abssum_ref)] {
        if (a - b).abs() > tol_sum {
            fails.push(format!("{what} {a} vs {b} (tol {tol_sum:e})"));
        }
    }
    eprintln!(
        "{key}: sampled max|diff| {dval:.2e} (tol {eps:.2e}; torch f32 vs f64 {:.2e}), \
         |sum diff| {:.2e}, |abssum diff| / abssum {:.2e} (tol {tol_sum:.2e})",
        err[0],
        (sum - sum_ref).abs(),
        (abssum - abssum_ref).abs() / abssum_ref.max(1e-30)
    );
    if fails.is_empty() {
        Ok(())
    } else {
        Err(format!("{key}: {}", fails.join("; ")))
    }
}
