//! Tests of the training config.

use super::*;

#[test]
fn schedule_matches_mmseg_poly_and_warmup() {
    let s = ScheduleConfig::default();
    assert_eq!(s.lr_at(0.01, 0, 100), 0.01);
    let want = (0.01 - 1e-4) * (0.5f64).powf(0.9) + 1e-4;
    assert!((s.lr_at(0.01, 50, 100) - want).abs() < 1e-15);
    assert!((s.lr_at(0.01, 100, 100) - 1e-4).abs() < 1e-15);
    let w = ScheduleConfig {
        policy: LrPolicy::Constant {},
        warmup: Some(WarmupConfig {
            iters: 10,
            start_factor: 0.1,
        }),
    };
    assert!((w.lr_at(1.0, 0, 100) - 0.1).abs() < 1e-15);
    assert!((w.lr_at(1.0, 5, 100) - 0.55).abs() < 1e-15);
    assert_eq!(w.lr_at(1.0, 10, 100), 1.0);
}

#[test]
fn bad_configs_are_clear() {
    let base = r#""model": {"type": "Preset", "name": "x"}, "dataset": {"type": "Custom", "root": "d"},
        "iterations": 10, "batch_size": 2, "output_dir": "o""#;
    let e = TrainConfig::from_json(&format!(
        r#"{{{base}, "optimizer": {{"type": "SGD", "lr": 0.01, "momentum": 1.5}}}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("momentum"), "{e}");
    let e = TrainConfig::from_json(&format!(
        r#"{{{base}, "optimizer": {{"type": "SGD", "lr": 0.01}}, "pipeline": [{{"type": "Blur"}}]}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("RandomCrop"), "{e}");
    let e = TrainConfig::from_json(&format!(
        r#"{{{base}, "optimizer": {{"type": "SGD", "lr": 0.01}}, "iteration": 3}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("iteration"), "{e}");
}
