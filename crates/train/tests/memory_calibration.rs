//! Calibration of the training memory estimate (`segkit_train::memory`): the peak resident
//! memory of training steps of a preset at a given input size and batch size, printed as one
//! JSON line. Ignored by default (it is a measurement, not a check); run one case per process
//! (the peak, `VmHWM`, never falls):
//!
//! ```text
//! SEGKIT_CAL_PRESET=pspnet_r50-d8_ade20k-512x512 SEGKIT_CAL_SIZE=128 SEGKIT_CAL_BATCH=2 \
//!   cargo test --release -p segkit-train --test memory_calibration -- --ignored --nocapture
//! ```
//!
//! The per-pixel constants of `memory.rs` are `(peak(S2) - peak(S1)) / (batch (S2^2 - S1^2))`
//! over two sizes of one preset (the constant parts cancel).

use segkit_train::data::write_toy_dataset;
use segkit_train::{DatasetConfig, ModelSpec, TrainConfig, Trainer};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "a measurement: run one case per process, see the module docs"]
fn peak_memory_of_training_steps() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let preset = env(
        "SEGKIT_CAL_PRESET",
        "segkit_demo_r18w16_psp_fashion-128x128",
    );
    let size: usize = env("SEGKIT_CAL_SIZE", "64").parse().unwrap();
    let batch: usize = env("SEGKIT_CAL_BATCH", "2").parse().unwrap();
    let steps: usize = env("SEGKIT_CAL_STEPS", "2").parse().unwrap();
    let mut model = segkit_train::resolve_preset(&preset).unwrap();
    model.data_preprocessor.size = None;
    let k = model.num_classes().min(200) as u8;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    write_toy_dataset(&root, &[("train", batch), ("val", 1)], size, k.min(4), 3).unwrap();
    // The toy dataset's class names come from the model; only its labels are < 4.
    let mut cfg = TrainConfig::from_json(
        r#"{"model": {"type": "Preset", "name": "x"}, "dataset": {"type": "Custom", "root": "d"},
            "optimizer": {"type": "SGD", "lr": 0.01}, "iterations": 100, "batch_size": 2,
            "output_dir": "o", "pipeline": []}"#,
    )
    .unwrap();
    cfg.model = ModelSpec::Config {
        config: Box::new(model),
    };
    cfg.dataset = DatasetConfig::Custom {
        root,
        train_split: "train".into(),
        val_split: "val".into(),
        ignore_index: 255,
    };
    cfg.batch_size = batch;
    cfg.output_dir = dir.path().join("out");
    let before = status_kib("VmRSS:");
    let mut t = Trainer::new(cfg).unwrap().quiet(true);
    let built = status_kib("VmHWM:");
    let params: usize = t.weights().unwrap().values().map(|w| w.elem_count()).sum();
    for _ in 0..steps {
        t.step().unwrap();
    }
    let peak = status_kib("VmHWM:");
    println!(
        "{{\"preset\": \"{preset}\", \"size\": {size}, \"batch\": {batch}, \"params\": {params}, \
         \"rss_before_kib\": {before}, \"hwm_built_kib\": {built}, \"hwm_peak_kib\": {peak}}}"
    );
}
