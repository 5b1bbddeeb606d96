//! mmseg cross-entropy (both averaging modes, class weights, loss weight), PSSL weighting and
//! the OHEM pixel sampler against `cross_entropy.safetensors`.

use segkit_losses::{CrossEntropyLoss, OhemCrossEntropyLoss, OhemPixelSampler};

use crate::common::*;

fn check(f: &Fixture, name: &str, cfg: &CrossEntropyLoss) {
    let x = var(f, &format!("{name}.logits"));
    let t = get(f, &format!("{name}.target"));
    let loss = cfg.forward(x.as_tensor(), &t).unwrap();
    let g = loss.backward().unwrap();
    assert_close(
        &format!("ce/{name} loss"),
        &loss,
        &get(f, &format!("{name}.loss")),
    );
    assert_close(
        &format!("ce/{name} grad"),
        &grad(&g, &x),
        &get(f, &format!("{name}.grad")),
    );
}

#[test]
fn cross_entropy_matches_mmseg() {
    let f = load("cross_entropy.safetensors");
    let cw = |name: &str| {
        Some(
            get(&f, &format!("{name}.class_weight"))
                .to_vec1::<f32>()
                .unwrap(),
        )
    };
    let mm = CrossEntropyLoss::mmseg;
    check(&f, "default", &mm());
    check(&f, "non_ignore", &CrossEntropyLoss::mean_non_ignored());
    check(
        &f,
        "loss_weight",
        &CrossEntropyLoss {
            loss_weight: 0.4,
            ..mm()
        },
    );
    check(
        &f,
        "class_weight_all",
        &CrossEntropyLoss {
            class_weight: cw("class_weight_all"),
            ..mm()
        },
    );
    check(
        &f,
        "ignore_in_range",
        &CrossEntropyLoss {
            ignore_index: int(&f, "ignore_in_range.ignore_index"),
            class_weight: cw("ignore_in_range"),
            ..mm()
        },
    );
    check(
        &f,
        "class_weight_non_ignore",
        &CrossEntropyLoss {
            class_weight: cw("class_weight_non_ignore"),
            avg_non_ignore: true,
            ..mm()
        },
    );
    check(&f, "flat", &mm());
    check(&f, "pssl", &CrossEntropyLoss::pssl());
}

#[test]
fn ohem_matches_mmseg_sampler() {
    let f = load("cross_entropy.safetensors");
    for name in [
        "ohem_default",
        "ohem_kept20",
        "ohem_kept150",
        "ohem_nothresh",
    ] {
        let key = |k: &str| format!("{name}.{k}");
        let thresh = has(&f, &key("thresh")).then(|| scalar(&f, &key("thresh")));
        let ohem = OhemCrossEntropyLoss {
            sampler: OhemPixelSampler {
                thresh,
                min_kept: int(&f, &key("min_kept")) as usize,
                ignore_index: 255,
            },
            loss: CrossEntropyLoss {
                avg_non_ignore: int(&f, &key("avg_non_ignore")) != 0,
                ..CrossEntropyLoss::mmseg()
            },
        };
        let x = var(&f, &key("logits"));
        let t = get(&f, &key("target"));
        let w = ohem.sampler.sample(x.as_tensor(), &t, &ohem.loss).unwrap();
        let want_w = get(&f, &key("weight"));
        assert_eq!(
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want_w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}: OHEM weights differ"
        );
        let loss = ohem.forward(x.as_tensor(), &t).unwrap();
        let g = loss.backward().unwrap();
        assert_close(&format!("ohem/{name} loss"), &loss, &get(&f, &key("loss")));
        assert_close(
            &format!("ohem/{name} grad"),
            &grad(&g, &x),
            &get(&f, &key("grad")),
        );
    }
}

/// mmseg's decode-head loss on low-resolution logits (`resize` to the label size, then
/// `CrossEntropyLoss`) against [`CrossEntropyLoss::forward_resized`], which never builds the
/// resized logits: `cross_entropy_resized.safetensors`, logits and labels regenerated from the
/// stored splitmix64 seeds (a Cityscapes crop at full size, 150 weighted classes, corners).
#[test]
fn resized_cross_entropy_matches_mmseg() {
    use candle_core::{Device, Tensor, Var};
    use segkit_losses::{PointSource, SeededPointSource};

    let f = load("cross_entropy_resized.safetensors");
    for name in ["cityscapes", "ade_weighted", "corners"] {
        let seed = int(&f, &format!("{name}.seed")) as u64;
        let s: Vec<usize> = ints(&f, &format!("{name}.shape"))
            .iter()
            .map(|&v| v as usize)
            .collect();
        let (n, c, h, w, oh, ow) = (s[0], s[1], s[2], s[3], s[4], s[5]);
        let u = SeededPointSource::new(seed).uniform(&[n, c, h, w]).unwrap();
        let logits: Vec<f32> = u.iter().map(|&u| (u - 0.5) * 8.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(logits, (n, c, h, w), &Device::Cpu).unwrap())
            .unwrap();
        let k = SeededPointSource::new(seed + 1)
            .uniform(&[n, oh, ow])
            .unwrap();
        let labels: Vec<u32> = k
            .iter()
            .map(|&u| match (u * 16_777_216.0) as u32 % (c as u32 + 2) {
                l if (l as usize) < c => l,
                _ => 255,
            })
            .collect();
        let target = Tensor::from_vec(labels, (n, oh, ow), &Device::Cpu).unwrap();
        let key = format!("{name}.class_weight");
        let cfg = CrossEntropyLoss {
            class_weight: has(&f, &key).then(|| get(&f, &key).to_vec1::<f32>().unwrap()),
            avg_non_ignore: int(&f, &format!("{name}.avg_non_ignore")) == 1,
            loss_weight: scalar(&f, &format!("{name}.loss_weight")) as f64,
            ..CrossEntropyLoss::mmseg()
        };
        let ac = int(&f, &format!("{name}.align_corners")) == 1;
        let loss = cfg.forward_resized(x.as_tensor(), &target, ac).unwrap();
        let g = loss.backward().unwrap();
        assert_close(
            &format!("ce_resized/{name} loss"),
            &loss,
            &get(&f, &format!("{name}.loss")),
        );
        let (got, want) = (grad(&g, &x), get(&f, &format!("{name}.grad")));
        assert_close(&format!("ce_resized/{name} grad"), &got, &want);
        // The per-pixel gradients are ~1e-4 (the mean over 0.5M pixels): compare them relative
        // to their own scale too, not only to assert_close's floor of 1.
        let max = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let d = max(&(&got - &want).unwrap()).to_scalar::<f32>().unwrap();
        let m = max(&want).to_scalar::<f32>().unwrap();
        assert!(
            d <= 1e-5 * m,
            "ce_resized/{name}: grad differs by {d} (max {m})"
        );
    }
}
