//! The losses train: a few plain gradient steps on free logits lower each loss.

use candle_core::{DType, Device, Tensor, Var};
use segkit_losses::{
    CrossEntropyLoss, JointEdgeSegLoss, MaskTargets, OneFormerLoss, OneFormerLossConfig,
    SeededPointSource, SetPrediction,
};

fn step(v: &Var, loss: &Tensor, lr: f64) {
    let g = loss.backward().unwrap();
    let d = g.get(v.as_tensor()).unwrap();
    v.set(&(v.as_tensor() - (d * lr).unwrap()).unwrap())
        .unwrap();
}

#[test]
fn gradient_steps_lower_the_losses() {
    let dev = Device::Cpu;
    // Cross-entropy.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 6, 6), &dev).unwrap()).unwrap();
    let t = Tensor::rand(0f32, 4.0, (2, 6, 6), &dev)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let ce = CrossEntropyLoss::mean_non_ignored();
    let first = ce
        .forward(x.as_tensor(), &t)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for _ in 0..20 {
        let l = ce.forward(x.as_tensor(), &t).unwrap();
        step(&x, &l, 50.0);
    }
    let last = ce
        .forward(x.as_tensor(), &t)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(last < 0.5 * first, "CE {first} -> {last}");

    // GSCNN joint loss (segmentation logits only).
    let seg = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &dev).unwrap()).unwrap();
    let st = Tensor::rand(0f32, 3.0, (1, 8, 8), &dev)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let edge = Tensor::ones((1, 1, 8, 8), DType::F32, &dev).unwrap();
    let joint = JointEdgeSegLoss::gscnn(3);
    let eval = |s: &Tensor| {
        joint
            .forward(s, &edge, &st, &edge, None)
            .unwrap()
            .total()
            .unwrap()
    };
    let first = eval(seg.as_tensor()).to_scalar::<f32>().unwrap();
    for _ in 0..20 {
        let l = eval(seg.as_tensor());
        step(&seg, &l, 5.0);
    }
    let last = eval(seg.as_tensor()).to_scalar::<f32>().unwrap();
    assert!(last < first, "GSCNN {first} -> {last}");

    // OneFormer set criterion (fixed point draws each step).
    let masks = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev).unwrap()).unwrap();
    let classes = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 4, 4), &dev).unwrap()).unwrap();
    let gt = Tensor::rand(0f32, 1.0, (2, 8, 8), &dev)
        .unwrap()
        .ge(0.5)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let targets = vec![MaskTargets {
        masks: gt,
        classes: vec![0, 2],
    }];
    let crit = OneFormerLoss::new(OneFormerLossConfig {
        num_points: 32,
        ..OneFormerLossConfig::oneformer(3)
    });
    let eval = || {
        let p = SetPrediction {
            masks_queries_logits: masks.as_tensor().clone(),
            class_queries_logits: classes.as_tensor().clone(),
        };
        crit.forward(&p, &[], &targets, None, &mut SeededPointSource::new(9))
            .unwrap()
            .total()
            .unwrap()
    };
    let first = eval().to_scalar::<f32>().unwrap();
    for _ in 0..30 {
        let l = eval();
        let g = l.backward().unwrap();
        for v in [&masks, &classes] {
            let d = g.get(v.as_tensor()).unwrap();
            v.set(&(v.as_tensor() - (d * 0.5).unwrap()).unwrap())
                .unwrap();
        }
    }
    let last = eval().to_scalar::<f32>().unwrap();
    assert!(last < first, "OneFormer {first} -> {last}");
}
