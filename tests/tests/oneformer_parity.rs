//! OneFormer parity against transformers' `OneFormerForUniversalSegmentation`
//! (fixtures: tests/parity/gen_oneformer.py; synthetic weights for every state-dict key).
//!
//! - The full oneformer_ade20k_swin_tiny architecture (Swin-T, 6-layer pixel decoder, 10
//!   decoder layers, 150 queries / classes) on a 1x3x97x129 input, for each task: class and
//!   mask logits, contrastive queries, task token, every auxiliary stage.
//! - A reduced configuration with batch 2 in training mode (dropout and drop path 0) with the
//!   text mapper: text queries and the query-text contrastive loss.
//! - Directories written by `save_pretrained` (model.safetensors) and `torch.save`
//!   (pytorch_model.bin) load unchanged and reproduce transformers' outputs.

use candle_core::{DType, Device, Tensor};
use segkit::oneformer_parts::postprocess::{Segment, SegmentationResult};
use segkit::oneformer_parts::tokenizer::Task;
use segkit::{OneFormer, OneFormerConfig, OneFormerOutput, OneFormerPrediction, PredictOptions};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_tests::{assert_sampled_close, fixture_path, get, load_fixture};
use std::collections::HashMap;

type Fixture = HashMap<String, Tensor>;

fn config(name: &str) -> OneFormerConfig {
    let p = fixture_path(&format!("oneformer/{name}_config.json"));
    let text = std::fs::read_to_string(&p).unwrap();
    OneFormerConfig::from_hf_json(name, &text).unwrap()
}

fn check_outputs(out: &OneFormerOutput, f: &Fixture) {
    assert_sampled_close("task_token", &out.task_token, f);
    assert_sampled_close("contrastive_queries", &out.contrastive_queries, f);
    let count = get(f, "aux.count").to_vec1::<i64>().unwrap()[0] as usize;
    assert_eq!(out.auxiliary.len(), count, "auxiliary stages");
    for (i, aux) in out.auxiliary.iter().enumerate() {
        let name = |k: &str| format!("aux{i}.{k}");
        assert_sampled_close(&name("class_queries_logits"), &aux.class_queries_logits, f);
        assert_sampled_close(&name("masks_queries_logits"), &aux.masks_queries_logits, f);
    }
    assert_sampled_close("class_queries_logits", &out.class_queries_logits, f);
    assert_sampled_close("masks_queries_logits", &out.masks_queries_logits, f);
}

#[test]
fn full_swin_tiny_all_tasks() {
    let dev = Device::Cpu;
    let cfg = config("full");
    assert_eq!(cfg.decoder.num_queries, 150);
    assert_eq!(cfg.decoder.decoder_layers, 10);
    match &cfg.backbone {
        segkit::oneformer::OneFormerBackboneConfig::Swin(s) => {
            assert_eq!(s.depths, vec![2, 2, 6, 2])
        }
        other => panic!("expected Swin, got {other:?}"),
    }
    let model = OneFormer::new(&cfg, synthetic_var_builder(DType::F32, &dev)).unwrap();
    let x = synthetic_input("oneformer.full", &[1, 3, 97, 129], &dev).unwrap();
    for task in ["semantic", "instance", "panoptic"] {
        eprintln!("task {task}");
        let f = load_fixture(&format!("oneformer/full_swin_tiny_{task}.safetensors"));
        let out = model
            .forward(&x, get(&f, "task_inputs"), None, false)
            .unwrap();
        assert_eq!(out.auxiliary.len(), 9);
        check_outputs(&out, &f);
        // The inference path (`predict_image`'s) drops the auxiliary stages as it goes and
        // gives the same final predictions, bit for bit.
        let fin = model.forward_final(&x, get(&f, "task_inputs")).unwrap();
        assert!(fin.auxiliary.is_empty());
        let bits = |t: &Tensor| segkit_core::testing::f32_bits(t).unwrap();
        for (a, b) in [
            (&fin.class_queries_logits, &out.class_queries_logits),
            (&fin.masks_queries_logits, &out.masks_queries_logits),
            (&fin.contrastive_queries, &out.contrastive_queries),
            (&fin.task_token, &out.task_token),
        ] {
            assert_eq!(bits(a), bits(b), "forward_final vs forward ({task})");
        }
    }
}

#[test]
fn reduced_training_mode_with_text_mapper() {
    let dev = Device::Cpu;
    let cfg = config("reduced_train");
    assert!(cfg.is_training);
    let model = OneFormer::new(&cfg, synthetic_var_builder(DType::F32, &dev)).unwrap();
    let f = load_fixture("oneformer/reduced_train.safetensors");
    let x = synthetic_input("oneformer.reduced", &[2, 3, 61, 83], &dev).unwrap();
    let out = model
        .forward(
            &x,
            get(&f, "task_inputs"),
            Some(get(&f, "text_inputs")),
            true,
        )
        .unwrap();
    check_outputs(&out, &f);
    let text = out.text_queries.as_ref().unwrap();
    assert_sampled_close("text_queries", text, &f);
    // The query-text contrastive loss (segkit-losses) on these queries with the checkpoint's
    // logit_scale, against transformers' OneFormerLoss.loss_contrastive.
    let scale = model.logit_scale().expect("criterion.logit_scale");
    let loss = segkit_losses::contrastive::query_text_contrastive_loss(
        &out.contrastive_queries,
        text,
        scale,
    )
    .unwrap();
    let got = loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let want = get(&f, "loss_contrastive").to_vec1::<f32>().unwrap()[0] as f64;
    eprintln!("contrastive loss {got} vs {want}");
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0));
}

fn hf_dir(kind: &str) {
    let dev = Device::Cpu;
    let dir = fixture_path(&format!("oneformer/hf_dir_{kind}"));
    let model = OneFormer::from_hf_dir(&dir, &dev).unwrap();
    assert!(model.text_mapper().is_none());
    let f = load_fixture("oneformer/hf_dir_outputs.safetensors");
    let x = synthetic_input("oneformer.hfdir", &[1, 3, 45, 70], &dev).unwrap();
    let out = model
        .forward(&x, get(&f, "task_inputs"), None, false)
        .unwrap();
    check_outputs(&out, &f);
}

#[test]
fn hf_dir_safetensors_loads_unchanged() {
    hf_dir("safetensors");
}

#[test]
fn hf_dir_pytorch_bin_loads_unchanged() {
    hf_dir("bin");
}

fn read_json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path(rel)).unwrap()).unwrap()
}

/// The full configuration with the photo fixture's preprocessing (shortest edge 96).
fn photo_config() -> OneFormerConfig {
    let mut cfg = config("full");
    let pre = read_json("oneformer/photo_preprocessor_config.json");
    cfg.preprocess = segkit::oneformer::OneFormerPreprocessConfig::from_json(&pre).unwrap();
    assert_eq!(cfg.preprocess.shortest_edge, 96);
    cfg
}

/// Tokenizer and model for `task` on the preprocessed photo `x`: the processor's task inputs
/// exactly, the logits within tolerance.
fn check_photo_forward(model: &OneFormer, x: &Tensor, task: Task, f: &Fixture) {
    let t = task.as_str();
    let ti = model.task_inputs(task).unwrap();
    let want_ti = get(f, &format!("{t}.task_inputs"));
    let d = (&ti - want_ti).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{t}: task inputs");
    let out = model.forward(x, &ti, None, false).unwrap();
    assert_sampled_close(
        &format!("{t}.class_queries_logits"),
        &out.class_queries_logits,
        f,
    );
    assert_sampled_close(
        &format!("{t}.masks_queries_logits"),
        &out.masks_queries_logits,
        f,
    );
}

/// The post-processing options of task `t`: the fixture's (lowered) thresholds and stuff
/// classes, when it records them.
fn photo_options(meta: &serde_json::Value, t: &str) -> PredictOptions {
    let mut opts = PredictOptions::default();
    if let Some(m) = meta["tasks"].get(t) {
        let kw = |k: &str| m[k].as_f64().unwrap();
        opts.instance.threshold = kw("threshold");
        opts.instance.mask_threshold = kw("mask_threshold");
        opts.instance.overlap_mask_area_threshold = kw("overlap_mask_area_threshold");
        opts.panoptic.threshold = kw("threshold");
        opts.panoptic.mask_threshold = kw("mask_threshold");
        opts.panoptic.overlap_mask_area_threshold = kw("overlap_mask_area_threshold");
        opts.panoptic.label_ids_to_fuse = meta["stuff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
    }
    opts
}

/// The end-to-end prediction of task `t` against transformers' map and segments.
fn check_photo_prediction(
    pred: OneFormerPrediction,
    t: &str,
    opts: &PredictOptions,
    f: &Fixture,
    meta: &serde_json::Value,
) {
    let want_map: Vec<i32> = get(f, &format!("{t}.map"))
        .flatten_all()
        .unwrap()
        .to_vec1::<i32>()
        .unwrap();
    match pred {
        OneFormerPrediction::Semantic(r) => {
            let got: Vec<i32> = r.segmentation.iter().map(|&v| v as i32).collect();
            let differ = got.iter().zip(&want_map).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "semantic map: {differ} pixels differ");
        }
        OneFormerPrediction::Instance(r) | OneFormerPrediction::Panoptic(r) => {
            let differ = r
                .segmentation
                .iter()
                .zip(&want_map)
                .filter(|(a, b)| a != b)
                .count();
            eprintln!(
                "{t}: {differ} of {} pixels differ end to end",
                want_map.len()
            );
            if t == "panoptic" {
                check_panoptic_ties(&r, &want_map, &opts.panoptic, f);
            } else {
                assert_eq!(differ, 0, "{t}: {differ} pixels differ");
            }
            check_segments(&r.segments, t, meta);
        }
    }
}

/// Synthetic weights make every query's class score ~0.033 (spread 1e-5), so the per-pixel
/// arg-max of score x mask has ties at float-rounding level. Every pixel of the panoptic map
/// `r` (and of segkit's post-processing of transformers' own logits) that differs from
/// `want_map` must be one where transformers' top-2 margin is within the logits' agreement
/// (1e-6 relative to the score); on transformers' logits the segments are equal.
fn check_panoptic_ties(
    r: &SegmentationResult,
    want_map: &[i32],
    opts: &segkit::oneformer_parts::postprocess::PanopticConfig,
    f: &Fixture,
) {
    let margin = get(f, "panoptic.margin")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let tie = |i: usize| margin[i] <= 0.033 * 1e-6;
    let check = |map: &[i32], what: &str| {
        let bad: Vec<usize> = (0..want_map.len())
            .filter(|&i| map[i] != want_map[i] && !tie(i))
            .collect();
        let n = (0..want_map.len())
            .filter(|&i| map[i] != want_map[i])
            .count();
        eprintln!("{what}: {n} pixels differ, all at ties: {}", bad.is_empty());
        assert!(
            bad.is_empty(),
            "{what}: pixels {bad:?} differ without a tie"
        );
    };
    check(&r.segmentation, "panoptic end to end");
    let exact = segkit::oneformer_parts::postprocess::post_process_panoptic_segmentation(
        get(f, "panoptic.class_queries_logits.full"),
        get(f, "panoptic.masks_queries_logits.full"),
        opts,
        Some(&[(96, 128)]),
    )
    .unwrap()
    .remove(0);
    check(&exact.segmentation, "panoptic on transformers' logits");
    assert_eq!(
        exact.segments, r.segments,
        "panoptic segments on HF's logits"
    );
}

/// The segments of task `t` equal the fixture's: ids, labels and scores.
fn check_segments(got: &[Segment], t: &str, meta: &serde_json::Value) {
    let want = meta["tasks"][t]["segments"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{t}: segment count");
    assert!(!want.is_empty(), "{t}: the fixture has no segments");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.id as i64, w["id"].as_i64().unwrap(), "{t}: id");
        assert_eq!(
            g.label_id as i64,
            w["label_id"].as_i64().unwrap(),
            "{t}: label"
        );
        assert!(
            (g.score - w["score"].as_f64().unwrap()).abs() <= 1e-5,
            "{t}: score"
        );
    }
    eprintln!("{t}: {} segments equal", got.len());
}

/// The real photo end to end: segkit's preprocessing, tokenizer, model and post-processing vs
/// OneFormerProcessor + the model + OneFormerImageProcessor's post-processing (thresholds
/// lowered in both because synthetic weights give near-uniform class probabilities).
#[test]
fn real_photo_three_tasks_end_to_end() {
    let dev = Device::Cpu;
    let model = OneFormer::new(&photo_config(), synthetic_var_builder(DType::F32, &dev)).unwrap();
    let f = load_fixture("oneformer/photo.safetensors");
    let meta = read_json("oneformer/photo.json");
    let img = segkit::image::open(fixture_path("oneformer/photo.png")).unwrap();
    for task in [Task::Semantic, Task::Instance, Task::Panoptic] {
        let x = model.preprocess(&img.to_rgb8()).unwrap();
        check_photo_forward(&model, &x, task, &f);
        let opts = photo_options(&meta, task.as_str());
        let pred = model.predict_image(&img, task, &opts).unwrap();
        check_photo_prediction(pred, task.as_str(), &opts, &f, &meta);
    }
}

/// OneFormer on transformers' `ResNetBackbone` (ResNet-50): segkit's ResNet reading HF's keys
/// directly (`KeyStyle::Hf`).
#[test]
fn resnet50_backbone_config() {
    let dev = Device::Cpu;
    let cfg = config("resnet50");
    assert!(matches!(
        cfg.backbone,
        segkit::oneformer::OneFormerBackboneConfig::ResNet(_)
    ));
    let model = OneFormer::new(&cfg, synthetic_var_builder(DType::F32, &dev)).unwrap();
    let f = load_fixture("oneformer/resnet50.safetensors");
    let x = synthetic_input("oneformer.resnet", &[1, 3, 65, 97], &dev).unwrap();
    let out = model
        .forward(&x, get(&f, "task_inputs"), None, false)
        .unwrap();
    check_outputs(&out, &f);
}
