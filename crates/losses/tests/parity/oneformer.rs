//! OneFormer's matcher, set criterion (auxiliary layers, padding of targets, an image without
//! targets), contrastive loss (incl. the logit-scale clamp) and the default 12544-point
//! configuration against `oneformer.safetensors`.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use segkit_losses::{
    ContrastiveInputs, MaskTargets, OneFormerLoss, OneFormerLossConfig, OneFormerLosses,
    PointSource, ReplayPointSource, SeededPointSource, SetPrediction,
};

use crate::common::*;

/// The contrastive inputs of a case: image queries, text queries, logit scale.
type Contrastive = (Var, Var, Var);

/// One case of `oneformer.safetensors`: the tensors under `{name}.`.
struct Case {
    f: Fixture,
    name: String,
}

impl Case {
    fn load(name: &str) -> Self {
        Self {
            f: load("oneformer.safetensors"),
            name: name.to_string(),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.name)
    }

    fn get(&self, k: &str) -> Tensor {
        get(&self.f, &self.key(k))
    }

    fn has(&self, k: &str) -> bool {
        has(&self.f, &self.key(k))
    }

    /// `(masks, classes)` logits of the main layer, then of each auxiliary layer.
    fn layers(&self) -> Vec<(Var, Var)> {
        let num_aux = int(&self.f, &self.key("num_aux")) as usize;
        (0..=num_aux)
            .map(|i| {
                (
                    var(&self.f, &self.key(&format!("layer{i}.masks"))),
                    var(&self.f, &self.key(&format!("layer{i}.classes"))),
                )
            })
            .collect()
    }

    fn targets(&self) -> Vec<MaskTargets> {
        (0..)
            .take_while(|i| self.has(&format!("target{i}.masks")))
            .map(|i| MaskTargets {
                masks: self.get(&format!("target{i}.masks")),
                classes: ints(&self.f, &self.key(&format!("target{i}.classes")))
                    .into_iter()
                    .map(|c| c as usize)
                    .collect(),
            })
            .collect()
    }

    fn contrastive(&self) -> Option<Contrastive> {
        self.has("image_queries").then(|| {
            (
                var(&self.f, &self.key("image_queries")),
                var(&self.f, &self.key("text_queries")),
                Var::from_tensor(&self.get("logit_scale").reshape(()).unwrap()).unwrap(),
            )
        })
    }

    /// The case's seeded point source, or a replay of its recorded `rand.{i}` draws.
    fn point_source(&self) -> Box<dyn PointSource> {
        if self.has("seed") {
            return Box::new(SeededPointSource::new(
                int(&self.f, &self.key("seed")) as u64
            ));
        }
        let draws = (0..)
            .map(|i| self.key(&format!("rand.{i}")))
            .take_while(|k| has(&self.f, k))
            .map(|k| get(&self.f, &k))
            .collect();
        Box::new(ReplayPointSource::new(draws))
    }

    /// Matching of every layer and image, exactly.
    fn check_matching(&self, losses: &OneFormerLosses) {
        let name = &self.name;
        for (layer, l) in std::iter::once(&losses.main).chain(&losses.aux).enumerate() {
            for (img, (src, tgt)) in l.matching.iter().enumerate() {
                let got: Vec<i64> = src
                    .iter()
                    .zip(tgt)
                    .flat_map(|(&a, &b)| [a as i64, b as i64])
                    .collect();
                assert_eq!(
                    got,
                    ints(&self.f, &self.key(&format!("match.{layer}.{img}"))),
                    "{name}: matching of layer {layer}, image {img}"
                );
            }
        }
    }

    /// Every named loss, and no more than the fixture has.
    fn check_losses(&self, losses: &OneFormerLosses) {
        let name = &self.name;
        let named = losses.named();
        for (k, t) in &named {
            assert_close(&format!("oneformer/{name} {k}"), t, &self.get(k));
        }
        assert_eq!(
            named.len(),
            self.f
                .keys()
                .filter(|k| k.starts_with(&format!("{name}.loss_")))
                .count()
        );
    }

    /// The gradients of every layer's logits and of the contrastive inputs.
    fn check_grads(&self, g: &GradStore, layers: &[(Var, Var)], contrastive: Option<&Contrastive>) {
        let name = &self.name;
        for (i, (m, c)) in layers.iter().enumerate() {
            assert_close(
                &format!("oneformer/{name} layer{i} masks grad"),
                &grad(g, m),
                &self.get(&format!("layer{i}.masks_grad")),
            );
            assert_close(
                &format!("oneformer/{name} layer{i} classes grad"),
                &grad(g, c),
                &self.get(&format!("layer{i}.classes_grad")),
            );
        }
        if let Some((i, t, s)) = contrastive {
            assert_close(
                &format!("oneformer/{name} image_queries grad"),
                &grad(g, i),
                &self.get("image_queries_grad"),
            );
            assert_close(
                &format!("oneformer/{name} text_queries grad"),
                &grad(g, t),
                &self.get("text_queries_grad"),
            );
            assert_close(
                &format!("oneformer/{name} logit_scale grad"),
                &grad(g, s),
                &self.get("logit_scale_grad"),
            );
        }
    }
}

fn run(name: &str) {
    let case = Case::load(name);
    let num_points = int(&case.f, &case.key("num_points")) as usize;
    let layers = case.layers();
    let preds: Vec<SetPrediction> = layers
        .iter()
        .map(|(m, c)| SetPrediction {
            masks_queries_logits: m.as_tensor().clone(),
            class_queries_logits: c.as_tensor().clone(),
        })
        .collect();
    let targets = case.targets();
    let contrastive = case.contrastive();
    let mut source = case.point_source();
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
            source.as_mut(),
        )
        .unwrap();
    case.check_matching(&losses);
    case.check_losses(&losses);
    let total = losses.total().unwrap();
    let g = total.backward().unwrap();
    assert_close(
        &format!("oneformer/{name} total"),
        &total,
        &case.get("total"),
    );
    case.check_grads(&g, &layers, contrastive.as_ref());
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
