//! OneFormer parity against transformers' `OneFormerForUniversalSegmentation`
//! (fixtures: tests/parity/gen_oneformer.py; synthetic weights for every state-dict key).
//!
//! - The full oneformer_ade20k_swin_tiny architecture (Swin-T, 6-layer pixel decoder, 10
//!   decoder layers, 150 queries / classes) on a 1x3x97x129 input, for each task: class and
//!   mask logits, contrastive queries, task token, the first auxiliary stage.
//! - A reduced configuration with batch 2 in training mode (dropout and drop path 0) with the
//!   text mapper: text queries and the query-text contrastive loss.
//! - Directories written by `save_pretrained` (model.safetensors) and `torch.save`
//!   (pytorch_model.bin) load unchanged and reproduce transformers' outputs.

use candle_core::{DType, Device, Tensor};
use segkit::{OneFormer, OneFormerConfig, OneFormerOutput};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_tests::{assert_sampled_close, fixture_path, get, load_fixture};
use std::collections::HashMap;

fn config(name: &str) -> OneFormerConfig {
    let p = fixture_path(&format!("oneformer/{name}_config.json"));
    let text = std::fs::read_to_string(&p).unwrap();
    OneFormerConfig::from_hf_json(name, &text).unwrap()
}

fn check_outputs(out: &OneFormerOutput, f: &HashMap<String, Tensor>) {
    assert_sampled_close("task_token", &out.task_token, f);
    assert_sampled_close("contrastive_queries", &out.contrastive_queries, f);
    assert_sampled_close(
        "aux0.class_queries_logits",
        &out.auxiliary[0].class_queries_logits,
        f,
    );
    assert_sampled_close(
        "aux0.masks_queries_logits",
        &out.auxiliary[0].masks_queries_logits,
        f,
    );
    assert_sampled_close("class_queries_logits", &out.class_queries_logits, f);
    assert_sampled_close("masks_queries_logits", &out.masks_queries_logits, f);
}

#[test]
fn full_swin_tiny_all_tasks() {
    let dev = Device::Cpu;
    let cfg = config("full");
    assert_eq!(cfg.decoder.num_queries, 150);
    assert_eq!(cfg.decoder.decoder_layers, 10);
    assert_eq!(cfg.backbone.depths, vec![2, 2, 6, 2]);
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
