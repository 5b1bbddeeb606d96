//! Gated-SCNN losses against `gscnn.safetensors`.

use segkit_losses::{
    edge_bce_loss, DualTaskLoss, ImageBasedCrossEntropyLoss, JointEdgeSegLoss, SegLossMode,
};

use crate::common::*;

#[test]
fn edge_bce_matches() {
    let f = load("gscnn.safetensors");
    let x = var(&f, "bce2d.input");
    let loss = edge_bce_loss(x.as_tensor(), &get(&f, "bce2d.target")).unwrap();
    let g = loss.backward().unwrap();
    assert_close("gscnn/bce2d loss", &loss, &get(&f, "bce2d.loss"));
    assert_close("gscnn/bce2d grad", &grad(&g, &x), &get(&f, "bce2d.grad"));
}

#[test]
fn image_based_ce_matches() {
    let f = load("gscnn.safetensors");
    let base = ImageBasedCrossEntropyLoss::gscnn(5);
    for (name, cfg) in [
        ("image_ce", base.clone()),
        (
            "image_ce_batch",
            ImageBasedCrossEntropyLoss {
                batch_weighting: true,
                ..base.clone()
            },
        ),
        (
            "image_ce_norm",
            ImageBasedCrossEntropyLoss {
                norm: true,
                ..base.clone()
            },
        ),
        (
            "image_ce_bound",
            ImageBasedCrossEntropyLoss {
                upper_bound: 2.5,
                ..base.clone()
            },
        ),
    ] {
        let x = var(&f, &format!("{name}.logits"));
        let loss = cfg
            .forward(x.as_tensor(), &get(&f, &format!("{name}.target")))
            .unwrap();
        let g = loss.backward().unwrap();
        assert_close(
            &format!("gscnn/{name} loss"),
            &loss,
            &get(&f, &format!("{name}.loss")),
        );
        assert_close(
            &format!("gscnn/{name} grad"),
            &grad(&g, &x),
            &get(&f, &format!("{name}.grad")),
        );
    }
}

#[test]
fn val_and_attention_ce_match() {
    let f = load("gscnn.safetensors");
    let joint = JointEdgeSegLoss::gscnn(5);
    // Validation-mode seg loss (CrossEntropyLoss2d): the `seg` term of a Val-mode joint loss.
    let x = var(&f, "val_ce.logits");
    let t = get(&f, "val_ce.target");
    let val = JointEdgeSegLoss {
        mode: SegLossMode::Val,
        ..joint.clone()
    };
    let edge = candle_core::Tensor::zeros(
        (2, 1, 9, 11),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let et = edge.clone();
    let l = val.forward(x.as_tensor(), &edge, &t, &et, None).unwrap();
    let g = l.seg.backward().unwrap();
    assert_close("gscnn/val_ce loss", &l.seg, &get(&f, "val_ce.loss"));
    assert_close("gscnn/val_ce grad", &grad(&g, &x), &get(&f, "val_ce.grad"));
    // Edge attention: the `att` term.
    let x = var(&f, "att.logits");
    let t = get(&f, "att.target");
    let edge = get(&f, "att.edge");
    let l = joint.forward(x.as_tensor(), &edge, &t, &et, None).unwrap();
    let g = l.att.backward().unwrap();
    assert_close("gscnn/att loss", &l.att, &get(&f, "att.loss"));
    assert_close("gscnn/att grad", &grad(&g, &x), &get(&f, "att.grad"));
}

#[test]
fn dual_task_matches() {
    let f = load("gscnn.safetensors");
    for name in ["dual_noise", "dual_plain", "dual_ties"] {
        let x = var(&f, &format!("{name}.logits"));
        let u = has(&f, &format!("{name}.uniform")).then(|| get(&f, &format!("{name}.uniform")));
        let loss = DualTaskLoss::default()
            .forward(
                x.as_tensor(),
                &get(&f, &format!("{name}.target")),
                u.as_ref(),
            )
            .unwrap();
        let g = loss.backward().unwrap();
        assert_close(
            &format!("gscnn/{name} loss"),
            &loss,
            &get(&f, &format!("{name}.loss")),
        );
        assert_close(
            &format!("gscnn/{name} grad"),
            &grad(&g, &x),
            &get(&f, &format!("{name}.grad")),
        );
    }
}

#[test]
fn joint_loss_matches() {
    let f = load("gscnn.safetensors");
    let x = var(&f, "joint.logits");
    let e = var(&f, "joint.edge");
    let l = JointEdgeSegLoss::gscnn(5)
        .forward(
            x.as_tensor(),
            e.as_tensor(),
            &get(&f, "joint.target"),
            &get(&f, "joint.edge_target"),
            Some(&get(&f, "joint.uniform")),
        )
        .unwrap();
    for (k, t) in [
        ("seg", &l.seg),
        ("edge", &l.edge),
        ("att", &l.att),
        ("dual", &l.dual),
    ] {
        assert_close(
            &format!("gscnn/joint {k}"),
            t,
            &get(&f, &format!("joint.loss_{k}")),
        );
    }
    let total = l.total().unwrap();
    let g = total.backward().unwrap();
    assert_close("gscnn/joint total", &total, &get(&f, "joint.total"));
    assert_close(
        "gscnn/joint grad seg",
        &grad(&g, &x),
        &get(&f, "joint.grad"),
    );
    assert_close(
        "gscnn/joint grad edge",
        &grad(&g, &e),
        &get(&f, "joint.edge_grad"),
    );
}
