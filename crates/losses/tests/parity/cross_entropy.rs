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
