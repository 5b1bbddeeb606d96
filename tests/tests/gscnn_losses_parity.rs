//! Gated-SCNN's losses (segkit-losses `gscnn`) and edge ground truth (segkit-data
//! `edges::edge_target`) against tests/fixtures/gscnn_losses (tests/parity/gen_gscnn_losses.py).
//!
//! The reference is not the official code (nv-tlabs/GSCNN is not installable): it is a small
//! PyTorch re-expression of the official math (`loss.py`, `my_functionals/DualTaskLoss.py`,
//! `my_functionals/custom_functional.py`, `datasets/edge_utils.py` with scipy's
//! `distance_transform_edt`), see the generator's docstring for each behaviour it pins down.
//!
//! Full class count (19, as Cityscapes; the official dual-task loss hard-codes it), batch 2,
//! odd size 33 x 47, labels with 255 void regions, image 1 with no edge above 0.8 (its
//! attention target is all ignored). Every element of every loss and gradient is compared:
//! `max|rust - ref| <= 1e-5 * max(max|ref|, 1e-3)` for values and gradients (gradient
//! elements are ~1e-4, so the bar is relative to each tensor's own scale), and the edge
//! maps must be equal.

use candle_core::{DType, Device, Tensor, Var};
use segkit::core::testing::uniform;
use segkit::data::edges::edge_target;
use segkit::losses::{
    edge_bce_loss, DualTaskGradient, DualTaskLoss, ImageBasedCrossEntropyLoss, JointEdgeSegLoss,
};
use segkit_tests::{get, load_fixture, max_abs_diff};

const N: usize = 2;
const C: usize = 19;
const H: usize = 33;
const W: usize = 47;
const FIXTURE: &str = "gscnn_losses/gscnn_losses.safetensors";

/// `scale * u + shift` from synth.py's `uniform(key)`, rounded once to f32.
fn synth(key: &str, dims: &[usize], scale: f64, shift: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = uniform(key, n)
        .into_iter()
        .map(|u| (scale * u + shift) as f32)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

struct Inputs {
    logits: Tensor,
    edge: Tensor,
    uniform: Tensor,
    labels: Tensor,
    edge_target: Tensor,
}

fn inputs(f: &std::collections::HashMap<String, Tensor>) -> Inputs {
    let edge = synth("gscnn_losses.edge", &[N, 1, H, W], 1.0, 0.0);
    let scale = Tensor::new(&[1f32, 0.79], &Device::Cpu)
        .unwrap()
        .reshape((N, 1, 1, 1))
        .unwrap();
    Inputs {
        logits: synth("gscnn_losses.logits", &[N, C, H, W], 6.0, -3.0),
        edge: edge.broadcast_mul(&scale).unwrap(),
        uniform: synth("gscnn_losses.gumbel", &[N, C, H, W], 1.0, 0.0),
        labels: get(f, "labels").to_dtype(DType::U32).unwrap(),
        edge_target: get(f, "edge_target").to_dtype(DType::F32).unwrap(),
    }
}

/// `max|got - want| <= 1e-5 * max(max|want|, 1e-3)`, printed.
fn check(what: &str, got: &Tensor, want: &Tensor) {
    let (d, m) = max_abs_diff(got, want);
    let tol = 1e-5 * m.max(1e-3);
    eprintln!("{what}: max|diff| = {d:.3e}, max|ref| = {m:.3e}, tol = {tol:.3e}");
    assert!(d <= tol, "{what}: max|diff| {d:e} > {tol:e}");
}

fn grad_of(loss: &Tensor, v: &Var) -> Tensor {
    loss.backward().unwrap().get(v.as_tensor()).unwrap().clone()
}

#[test]
fn edge_ground_truth_matches_edge_utils() {
    let f = load_fixture(FIXTURE);
    let labels = get(&f, "labels").to_dtype(DType::U8).unwrap();
    let want = get(&f, "edge_target").flatten_all().unwrap();
    let lab = labels.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let mut got = Vec::new();
    for img in lab.chunks(H * W) {
        got.extend(edge_target(img, H, W, C, 2.0).unwrap());
    }
    assert_eq!(
        got,
        want.to_vec1::<u8>().unwrap(),
        "synthetic labels, radius 2"
    );
    for name in ["voc_gt_sem_a", "voc_gt_sem_b"] {
        let path = segkit_tests::fixture_path(&format!("data/{name}.png"));
        let img = image_luma(&path);
        let (h, w) = (375, 500);
        for (k, r) in [(19, 1), (19, 2), (19, 3), (20, 2)] {
            let packed = get(&f, &format!("voc.{name}.k{k}_r{r}"));
            let packed = packed.to_vec1::<u8>().unwrap();
            let want: Vec<u8> = (0..h * w)
                .map(|i| (packed[i / 8] >> (7 - i % 8)) & 1)
                .collect();
            let got = edge_target(&img, h, w, k, f64::from(r)).unwrap();
            let edges = want.iter().filter(|&&v| v == 1).count();
            assert_eq!(got, want, "{name}, {k} classes, radius {r}");
            eprintln!(
                "{name} k={k} r={r}: {edges} edge pixels, all {} equal",
                h * w
            );
        }
    }
}

/// An 8-bit grey PNG's values.
fn image_luma(path: &std::path::Path) -> Vec<u8> {
    let img = segkit::data::image::open(path).unwrap();
    img.to_luma8().into_raw()
}

#[test]
fn seg_edge_and_attention_losses() {
    let f = load_fixture(FIXTURE);
    let x = inputs(&f);
    let seg = ImageBasedCrossEntropyLoss::gscnn(C);
    let v = Var::from_tensor(&x.logits).unwrap();
    let loss = seg.forward(v.as_tensor(), &x.labels).unwrap();
    check("seg loss", &loss, get(&f, "seg.loss"));
    check("seg grad", &grad_of(&loss, &v), get(&f, "seg.grad"));

    let e = Var::from_tensor(&x.edge).unwrap();
    let loss = edge_bce_loss(e.as_tensor(), &x.edge_target).unwrap();
    check("edge loss", &loss, get(&f, "edge.loss"));
    check("edge grad", &grad_of(&loss, &e), get(&f, "edge.grad"));

    let v = Var::from_tensor(&x.logits).unwrap();
    let t = segkit::losses::edge_attention_target(&x.labels, &x.edge, 0.8, 255).unwrap();
    let loss = seg.forward(v.as_tensor(), &t).unwrap();
    check("attention loss", &loss, get(&f, "att.loss"));
    check("attention grad", &grad_of(&loss, &v), get(&f, "att.grad"));
}

#[test]
fn dual_task_loss_released_and_paper() {
    let f = load_fixture(FIXTURE);
    let x = inputs(&f);
    for (mode, gradient) in [
        ("released", DualTaskGradient::AsReleased),
        ("paper", DualTaskGradient::AsPaper),
    ] {
        let dual = DualTaskLoss {
            gradient,
            ..DualTaskLoss::default()
        };
        let v = Var::from_tensor(&x.logits).unwrap();
        let loss = dual
            .forward(v.as_tensor(), &x.labels, Some(&x.uniform))
            .unwrap();
        check(
            &format!("dual ({mode}) loss"),
            &loss,
            get(&f, &format!("dual_{mode}.loss")),
        );
        check(
            &format!("dual ({mode}) grad"),
            &grad_of(&loss, &v),
            get(&f, &format!("dual_{mode}.grad")),
        );
    }
}

#[test]
fn joint_loss_both_modes() {
    let f = load_fixture(FIXTURE);
    let x = inputs(&f);
    for (mode, gradient) in [
        ("released", DualTaskGradient::AsReleased),
        ("paper", DualTaskGradient::AsPaper),
    ] {
        let mut joint = JointEdgeSegLoss::gscnn(C);
        joint.dual.gradient = gradient;
        let (v, e) = (
            Var::from_tensor(&x.logits).unwrap(),
            Var::from_tensor(&x.edge).unwrap(),
        );
        let l = joint
            .forward(
                v.as_tensor(),
                e.as_tensor(),
                &x.labels,
                &x.edge_target,
                Some(&x.uniform),
            )
            .unwrap();
        for (k, t) in [
            ("seg", &l.seg),
            ("edge", &l.edge),
            ("att", &l.att),
            ("dual", &l.dual),
        ] {
            check(
                &format!("joint ({mode}) {k}"),
                t,
                get(&f, &format!("joint_{mode}.{k}")),
            );
        }
        let total = l.total().unwrap();
        check(
            &format!("joint ({mode}) total"),
            &total,
            get(&f, &format!("joint_{mode}.total")),
        );
        let g = total.backward().unwrap();
        check(
            &format!("joint ({mode}) seg grad"),
            g.get(v.as_tensor()).unwrap(),
            get(&f, &format!("joint_{mode}.grad")),
        );
        check(
            &format!("joint ({mode}) edge grad"),
            g.get(e.as_tensor()).unwrap(),
            get(&f, &format!("joint_{mode}.edge_grad")),
        );
    }
}

#[test]
fn boundary_f_score_matches_f_boundary() {
    use segkit::data::metrics::{BoundaryFScore, BoundaryTolerance};
    let f = load_fixture(FIXTURE);
    let load = |n: &str| image_luma(&segkit_tests::fixture_path(&format!("data/{n}.png")));
    let pairs = [
        (load("voc_pred_sem_a"), load("voc_gt_sem_a")),
        (load("voc_pred_sem_b"), load("voc_gt_sem_b")),
    ];
    for (key, tol) in [
        ("0.0005", BoundaryTolerance::DiagonalFraction(0.0005)),
        ("0.001875", BoundaryTolerance::DiagonalFraction(0.001875)),
        ("0.00375", BoundaryTolerance::DiagonalFraction(0.00375)),
        ("0.005", BoundaryTolerance::DiagonalFraction(0.005)),
        ("9", BoundaryTolerance::Pixels(9)),
    ] {
        let mut m = BoundaryFScore::new(21, 255, tol);
        for (p, g) in &pairs {
            m.update(p, g, 375, 500).unwrap();
        }
        let r = m.compute();
        let want = get(&f, &format!("boundary.{key}.per_class"));
        let want = want.to_vec1::<f64>().unwrap();
        let mean = get(&f, &format!("boundary.{key}.mean"));
        let mean = mean.to_scalar::<f64>().unwrap();
        let d = r
            .per_class
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        eprintln!(
            "boundary F (bound_th {key}): {:.6} vs {mean:.6}, per-class max|diff| {d:.1e}",
            r.mean
        );
        assert!(
            d <= 1e-12 && (r.mean - mean).abs() <= 1e-12,
            "bound_th {key}"
        );
    }
}
