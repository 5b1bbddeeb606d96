//! OneFormer training parity against transformers (fixtures: tests/parity/gen_oneformer_train.py).
//!
//! - Targets: for three panoptic id maps and each task, segkit-oneformer's
//!   [`build_target`] gives `OneFormerProcessor`'s `class_labels`, `mask_labels` (every
//!   pixel), `text_inputs` (every id) and `task_inputs` (a processor call per image).
//! - One training step: a reduced OneFormer (Swin embed 8, width 64, 10 queries, 3 decoder
//!   layers = 2 auxiliary layers, text mapper width 64) with synthetic weights, in train mode,
//!   on a batch of three images with tasks panoptic / instance / semantic and the targets
//!   above: every key of transformers' weighted loss dictionary (`loss_mask`, `loss_dice`,
//!   `loss_cross_entropy`, `loss_contrastive`, and the three per auxiliary layer), the total,
//!   and every element of every parameter's gradient (the text mapper's token embedding at the
//!   rows of the tokens used, and exactly 0 elsewhere). The criterion runs at OneFormer's
//!   defaults (12544 points, oversample 3, importance 0.75). Random point draws: the generator
//!   replaces `torch.rand` during the loss by splitmix64 uniforms from the fixture's seed,
//!   which [`SeededPointSource`] yields in the same call order (15 calls: per layer 3 matcher
//!   draws and 2 importance-sampling draws).
//!
//! Tolerance: `max|rust - ref| <= 1e-4 * max(1, max|ref|)` per loss and per gradient tensor.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use segkit::oneformer_parts::targets::PanopticSegment;
use segkit::oneformer_parts::targets::{build_target, ClassMetadata, OneFormerTarget};
use segkit::oneformer_parts::tokenizer::{Task, TaskTokenizer};
use segkit::{OneFormer, OneFormerConfig};
use segkit_core::testing::set_synthetic;
use segkit_losses::{
    ContrastiveInputs, MaskTargets, OneFormerLoss, SeededPointSource, SetPrediction,
};
use segkit_tests::{assert_close, fixture_path, get, load_fixture, max_abs_diff};

type Fixture = HashMap<String, Tensor>;

struct Meta {
    classes: ClassMetadata,
    tasks: Vec<Task>,
    num_text: usize,
    height: usize,
    width: usize,
    seed: u64,
    no_gradient: Vec<String>,
}

fn meta() -> Meta {
    let text = std::fs::read_to_string(fixture_path("oneformer_train.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let strs = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let usz = |k: &str| v[k].as_u64().unwrap() as usize;
    let things: Vec<usize> = v["thing_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as usize)
        .collect();
    Meta {
        classes: ClassMetadata::from_thing_ids(strs("classes"), &things).unwrap(),
        tasks: strs("tasks").iter().map(|t| t.parse().unwrap()).collect(),
        num_text: usz("num_text"),
        height: usz("height"),
        width: usz("width"),
        seed: v["seed"].as_u64().unwrap(),
        no_gradient: strs("no_gradient"),
    }
}

fn to_i64(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// Image `i`'s targets for `task`, built from its panoptic id map and segment list.
fn target(f: &Fixture, m: &Meta, i: usize, task: Task) -> OneFormerTarget {
    let ids = to_i64(get(f, &format!("pan.{i}.ids")));
    let segs = to_i64(get(f, &format!("pan.{i}.segments")));
    let masks: Vec<(usize, Vec<bool>)> = segs
        .chunks(2)
        .map(|s| (s[1] as usize, ids.iter().map(|&p| p == s[0]).collect()))
        .collect();
    let segments: Vec<PanopticSegment<'_>> = masks
        .iter()
        .map(|(c, mask)| PanopticSegment {
            class_id: *c,
            mask,
            iscrowd: false,
        })
        .collect();
    build_target(task, &segments, m.height, m.width, &m.classes, m.num_text).unwrap()
}

#[test]
fn targets_equal_oneformer_processor() {
    let dev = Device::Cpu;
    let f = load_fixture("oneformer_train.safetensors");
    let m = meta();
    let tok = TaskTokenizer::clip_default().unwrap();
    for i in 0..3 {
        for task in Task::ALL {
            let p = format!("targets.{i}.{task}");
            let t = target(&f, &m, i, task);
            let want: Vec<usize> = to_i64(get(&f, &format!("{p}.class_labels")))
                .into_iter()
                .map(|c| c as usize)
                .collect();
            assert_eq!(t.classes, want, "{p}: class labels");
            let masks = t.masks_tensor(&dev).unwrap().to_dtype(DType::U8).unwrap();
            let want = get(&f, &format!("{p}.mask_labels"));
            assert_eq!(masks.dims(), want.dims(), "{p}: mask labels shape");
            let diff = masks
                .ne(want)
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            assert_eq!(diff, 0, "{p}: mask labels differ at {diff} pixels");
            let text = t.text_inputs(&tok, 77, &dev).unwrap();
            let text: Vec<i64> = text
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect();
            assert_eq!(text, to_i64(get(&f, &format!("{p}.text_inputs"))), "{p}");
            let ti = tok
                .task_inputs(task, 77, &dev)
                .unwrap()
                .flatten_all()
                .unwrap();
            let (d, _) = max_abs_diff(&ti, get(&f, &format!("{p}.task_inputs")));
            assert_eq!(d, 0.0, "{p}: task inputs");
            eprintln!(
                "{p}: {} targets, texts {:?}",
                t.classes.len(),
                &t.texts[..2]
            );
        }
    }
}

/// The model built on a VarMap whose every variable holds its synthetic value.
fn model(cfg: &OneFormerConfig, dev: &Device) -> (OneFormer, HashMap<String, Var>) {
    let varmap = VarMap::new();
    let model = OneFormer::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev)).unwrap();
    let vars: HashMap<String, Var> = set_synthetic(&varmap).unwrap().into_iter().collect();
    (model, vars)
}

#[test]
fn training_step_matches_transformers() {
    let dev = Device::Cpu;
    let f = load_fixture("oneformer_train.safetensors");
    let m = meta();
    let text = std::fs::read_to_string(fixture_path("oneformer_train_config.json")).unwrap();
    let cfg = OneFormerConfig::from_hf_json("oneformer_train", &text).unwrap();
    assert!(cfg.is_training);
    let (model, vars) = model(&cfg, &dev);
    let tok = model.tokenizer().clone();
    let targets: Vec<OneFormerTarget> = m
        .tasks
        .iter()
        .enumerate()
        .map(|(i, &t)| target(&f, &m, i, t))
        .collect();
    let tasks: Vec<Task> = targets.iter().map(|t| t.task).collect();
    let task_inputs = tok.task_inputs_batch(&tasks, 77, &dev).unwrap();
    let text_inputs: Vec<Tensor> = targets
        .iter()
        .map(|t| t.text_inputs(&tok, 77, &dev).unwrap())
        .collect();
    let text_inputs = Tensor::stack(&text_inputs, 0).unwrap();
    let out = model
        .forward(get(&f, "input"), &task_inputs, Some(&text_inputs), true)
        .unwrap();
    let mask_targets: Vec<MaskTargets> = targets
        .iter()
        .map(|t| MaskTargets {
            masks: t.masks_tensor(&dev).unwrap(),
            classes: t.classes.clone(),
        })
        .collect();
    let pred = |c: &Tensor, mk: &Tensor| SetPrediction {
        masks_queries_logits: mk.clone(),
        class_queries_logits: c.clone(),
    };
    let main = pred(&out.class_queries_logits, &out.masks_queries_logits);
    let aux: Vec<SetPrediction> = out
        .auxiliary
        .iter()
        .map(|a| pred(&a.class_queries_logits, &a.masks_queries_logits))
        .collect();
    let contrastive = ContrastiveInputs {
        image_queries: &out.contrastive_queries,
        text_queries: out.text_queries.as_ref().unwrap(),
        logit_scale: model.logit_scale().unwrap(),
    };
    let losses = OneFormerLoss::new(cfg.loss.clone())
        .forward(
            &main,
            &aux,
            &mask_targets,
            Some(contrastive),
            &mut SeededPointSource::new(m.seed),
        )
        .unwrap();
    let weighted = losses.weighted().unwrap();
    let n_keys = to_i64(get(&f, "loss.keys"))[0] as usize;
    assert_eq!(weighted.len(), n_keys, "loss keys");
    for (k, v) in &weighted {
        assert_close(k, &v.reshape(1).unwrap(), get(&f, &format!("loss.{k}")));
    }
    let total = losses.total().unwrap();
    assert_close("total", &total.reshape(1).unwrap(), get(&f, "loss.total"));
    let grads = total.backward().unwrap();
    check_gradients(&f, &m, &vars, &grads);
}

fn check_gradients(
    f: &Fixture,
    m: &Meta,
    vars: &HashMap<String, Var>,
    grads: &candle_core::backprop::GradStore,
) {
    let mut n = 0;
    let mut worst = (0f64, String::new());
    let mut failed = Vec::new();
    for (k, want) in f
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("grad.")?, t)))
    {
        let var = vars
            .get(k)
            .unwrap_or_else(|| panic!("segkit has no parameter `{k}`"));
        let Some(got) = grads.get(var.as_tensor()) else {
            failed.push(format!("{k}: no gradient"));
            continue;
        };
        let got = match f.get(&format!("grad_rows.{k}")) {
            // A sparse reference: the listed rows, and exactly zero elsewhere.
            Some(rows) => {
                let rows: Vec<u32> = to_i64(rows).into_iter().map(|r| r as u32).collect();
                let total = got.abs().unwrap().sum_all().unwrap();
                let idx = Tensor::new(rows.as_slice(), got.device()).unwrap();
                let picked = got.index_select(&idx, 0).unwrap();
                let rest = (total - picked.abs().unwrap().sum_all().unwrap()).unwrap();
                let rest = rest.to_scalar::<f32>().unwrap();
                assert!(
                    rest.abs() <= 1e-6,
                    "{k}: gradient outside the used rows: {rest}"
                );
                picked
            }
            None => got.clone(),
        };
        let (d, mx) = max_abs_diff(&got, want);
        let rel = d / mx.max(1.0);
        if rel > worst.0 {
            worst = (rel, k.to_string());
        }
        if rel > 1e-4 {
            failed.push(format!("{k}: max|diff| {d:.3e}, max|ref| {mx:.3e}"));
        }
        n += 1;
    }
    failed.sort();
    assert!(
        failed.is_empty(),
        "gradients beyond 1e-4 * max(1, max|ref|):\n{}",
        failed.join("\n")
    );
    // Weights transformers holds but never applies (Swin's final layernorm): segkit either
    // does not create them (a fresh VarMap) or gives them no gradient.
    let mut unused = 0;
    for k in &m.no_gradient {
        if let Some(var) = vars.get(k) {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{k}: unused, yet a gradient"
            );
            unused += 1;
        }
    }
    assert_eq!(
        n + unused,
        vars.len(),
        "parameters with a reference gradient"
    );
    eprintln!(
        "{n} gradients compared; worst max|diff| / max(1, max|ref|) = {:.3e} ({})",
        worst.0, worst.1
    );
}
