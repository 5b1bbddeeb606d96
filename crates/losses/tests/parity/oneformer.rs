//! OneFormer's matcher, set criterion (auxiliary layers, padding of targets, an image without
//! targets), contrastive loss (incl. the logit-scale clamp) and the default 12544-point
//! configuration against `oneformer.safetensors`.

use candle_core::Var;
use segkit_losses::{
    ContrastiveInputs, MaskTargets, OneFormerLoss, OneFormerLossConfig, PointSource,
    ReplayPointSource, SeededPointSource, SetPrediction,
};

use crate::common::*;

fn run(name: &str) {
    let f = load("oneformer.safetensors");
    let key = |k: &str| format!("{name}.{k}");
    let num_points = int(&f, &key("num_points")) as usize;
    let num_aux = int(&f, &key("num_aux")) as usize;
    let layers: Vec<(Var, Var)> = (0..=num_aux)
        .map(|i| {
            (
                var(&f, &key(&format!("layer{i}.masks"))),
                var(&f, &key(&format!("layer{i}.classes"))),
            )
        })
        .collect();
    let preds: Vec<SetPrediction> = layers
        .iter()
        .map(|(m, c)| SetPrediction {
            masks_queries_logits: m.as_tensor().clone(),
            class_queries_logits: c.as_tensor().clone(),
        })
        .collect();
    let targets: Vec<MaskTargets> = (0..)
        .take_while(|i| has(&f, &key(&format!("target{i}.masks"))))
        .map(|i| MaskTargets {
            masks: get(&f, &key(&format!("target{i}.masks"))),
            classes: ints(&f, &key(&format!("target{i}.classes")))
                .into_iter()
                .map(|c| c as usize)
                .collect(),
        })
        .collect();
    let contrastive = has(&f, &key("image_queries")).then(|| {
        (
            var(&f, &key("image_queries")),
            var(&f, &key("text_queries")),
            Var::from_tensor(&get(&f, &key("logit_scale")).reshape(()).unwrap()).unwrap(),
        )
    });
    let mut replay;
    let mut seeded;
    let source: &mut dyn PointSource = if has(&f, &key("seed")) {
        seeded = SeededPointSource::new(int(&f, &key("seed")) as u64);
        &mut seeded
    } else {
        let draws = (0..)
            .map(|i| key(&format!("rand.{i}")))
            .take_while(|k| has(&f, k))
            .map(|k| get(&f, &k))
            .collect();
        replay = ReplayPointSource::new(draws);
        &mut replay
    };
    let cfg = OneFormerLossConfig {
        num_points,
        ..OneFormerLossConfig::oneformer(5)
    };
    let losses = OneFormerLoss::new(cfg)
        .forward(
            &preds[0],
            &preds[1..],
            &targets,
            contrastive.as_ref().map(|(i, t, s)| ContrastiveInputs {
                image_queries: i.as_tensor(),
                text_queries: t.as_tensor(),
                logit_scale: s.as_tensor(),
            }),
            source,
        )
        .unwrap();

    // Matching of every layer and image, exactly.
    for (layer, l) in std::iter::once(&losses.main).chain(&losses.aux).enumerate() {
        for (img, (src, tgt)) in l.matching.iter().enumerate() {
            let got: Vec<i64> = src
                .iter()
                .zip(tgt)
                .flat_map(|(&a, &b)| [a as i64, b as i64])
                .collect();
            assert_eq!(
                got,
                ints(&f, &key(&format!("match.{layer}.{img}"))),
                "{name}: matching of layer {layer}, image {img}"
            );
        }
    }
    let named = losses.named();
    for (k, t) in &named {
        assert_close(&format!("oneformer/{name} {k}"), t, &get(&f, &key(k)));
    }
    assert_eq!(
        named.len(),
        f.keys()
            .filter(|k| k.starts_with(&format!("{name}.loss_")))
            .count()
    );
    let total = losses.total().unwrap();
    let g = total.backward().unwrap();
    assert_close(
        &format!("oneformer/{name} total"),
        &total,
        &get(&f, &key("total")),
    );
    for (i, (m, c)) in layers.iter().enumerate() {
        assert_close(
            &format!("oneformer/{name} layer{i} masks grad"),
            &grad(&g, m),
            &get(&f, &key(&format!("layer{i}.masks_grad"))),
        );
        assert_close(
            &format!("oneformer/{name} layer{i} classes grad"),
            &grad(&g, c),
            &get(&f, &key(&format!("layer{i}.classes_grad"))),
        );
    }
    if let Some((i, t, s)) = &contrastive {
        assert_close(
            &format!("oneformer/{name} image_queries grad"),
            &grad(&g, i),
            &get(&f, &key("image_queries_grad")),
        );
        assert_close(
            &format!("oneformer/{name} text_queries grad"),
            &grad(&g, t),
            &get(&f, &key("text_queries_grad")),
        );
        assert_close(
            &format!("oneformer/{name} logit_scale grad"),
            &grad(&g, s),
            &get(&f, &key("logit_scale_grad")),
        );
    }
}

#[test]
fn criterion_with_aux_and_contrastive() {
    run("criterion");
}

#[test]
fn criterion_with_an_image_without_targets() {
    run("one_empty");
}

#[test]
fn criterion_with_clamped_logit_scale() {
    run("clamped_scale");
}

#[test]
fn criterion_default_12544_points() {
    run("default_points");
}
