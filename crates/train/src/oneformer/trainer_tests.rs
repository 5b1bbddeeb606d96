//! OneFormer through the [`crate::Trainer`]: a toy set in the COCO panoptic layout, joint
//! training with exact resume, semantic-only training on a class-map dataset, evaluation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::tests::{sample, tiny_config};
use super::OneFormerSpec;
use crate::config::{
    ClipGradConfig, DatasetConfig, LrPolicy, ModelSpec, OptimizerConfig, ScheduleConfig,
    TrainConfig,
};
use crate::{TrainError, TrainResult, Trainer};

fn io(e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: PathBuf::from("<toy coco panoptic>"),
        reason: e.to_string(),
    }
}

/// Writes `train` / `val` splits of the toy images in the COCO panoptic layout: segment ids
/// 1.. in the PNG's RGB (`R + 256 G + 256^2 B`), background stuff and two thing classes.
pub(crate) fn write_toy_coco_panoptic(root: &Path, splits: &[(&str, usize)]) -> TrainResult<()> {
    let ann = root.join("annotations");
    let mut idx = 0;
    for &(split, n) in splits {
        let (img_dir, png_dir) = (
            root.join(format!("{split}2017")),
            ann.join(format!("panoptic_{split}2017")),
        );
        std::fs::create_dir_all(&img_dir).map_err(io)?;
        std::fs::create_dir_all(&png_dir).map_err(io)?;
        let (mut images, mut anns) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let s = sample(idx);
            let (w, h) = (s.width as u32, s.height as u32);
            let name = format!("{idx:04}");
            image::RgbImage::from_raw(w, h, s.image.clone())
                .ok_or_else(|| io("toy image size"))?
                .save(img_dir.join(format!("{name}.png")))
                .map_err(io)?;
            let mut png = vec![0u8; s.image.len()];
            let mut segs = Vec::new();
            for (j, a) in s.instances.iter().flatten().enumerate() {
                let id = j as u8 + 1;
                for (p, &m) in a.mask.iter().enumerate() {
                    if m {
                        png[p * 3] = id;
                    }
                }
                segs.push(
                    serde_json::json!({"id": id, "category_id": a.class_id + 1, "iscrowd": 0}),
                );
            }
            image::RgbImage::from_raw(w, h, png)
                .ok_or_else(|| io("toy png size"))?
                .save(png_dir.join(format!("{name}.png")))
                .map_err(io)?;
            let file = format!("{name}.png");
            images.push(serde_json::json!({"id": idx, "file_name": file, "width": w, "height": h}));
            anns.push(
                serde_json::json!({"image_id": idx, "file_name": file, "segments_info": segs}),
            );
            idx += 1;
        }
        let cats = serde_json::json!([
            {"id": 1, "name": "background", "isthing": 0},
            {"id": 2, "name": "square", "isthing": 1},
            {"id": 3, "name": "disc", "isthing": 1}
        ]);
        let json = serde_json::json!({"images": images, "annotations": anns, "categories": cats});
        std::fs::write(
            ann.join(format!("panoptic_{split}2017.json")),
            json.to_string(),
        )
        .map_err(io)?;
    }
    Ok(())
}

/// The tiny model with the released configs' decoder dropout (0.1): resume must stay exact.
fn tiny_config_with_dropout() -> segkit_models::OneFormerConfig {
    let mut c = tiny_config();
    c.decoder.dropout = 0.1;
    c
}

pub(crate) fn train_config(root: &Path, out: &Path, tasks: &[&str]) -> TrainConfig {
    TrainConfig {
        model: ModelSpec::OneFormer(Box::new(OneFormerSpec {
            config: Box::new(tiny_config_with_dropout()),
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
            thing_classes: Some(vec![1, 2]),
            backbone_multiplier: 0.1,
        })),
        dataset: DatasetConfig::CocoPanoptic {
            root: root.to_path_buf(),
            train_split: "train".into(),
            val_split: "val".into(),
        },
        pipeline: vec![],
        optimizer: OptimizerConfig::AdamW {
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.05,
            decay_norm_and_bias: false,
        },
        paramwise_cfg: None,
        clip_grad: None,
        schedule: ScheduleConfig {
            policy: LrPolicy::Poly {
                power: 0.9,
                min_lr: 0.0,
            },
            warmup: None,
        },
        iterations: 4,
        batch_size: 2,
        accumulate: 1,
        aux_loss_weight: None,
        eval_interval: 0,
        checkpoint_interval: 0,
        log_interval: 1,
        eval_batch_size: Some(1),
        val_limit: Some(2),
        seed: 7,
        load_from: None,
        pretrained: Vec::new(),
        output_dir: out.to_path_buf(),
        source: None,
    }
}

fn bits(w: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<u32>> {
    w.iter()
        .map(|(k, t)| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (k.clone(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

#[test]
fn joint_training_resumes_exactly_and_evaluates() -> TrainResult<()> {
    let dir = tempfile::tempdir().map_err(io)?;
    write_toy_coco_panoptic(dir.path(), &[("train", 4), ("val", 2)])?;
    let all = ["panoptic", "instance", "semantic"];
    let full_cfg = train_config(dir.path(), &dir.path().join("full"), &all);
    let mut full = Trainer::new(full_cfg.clone())?.quiet(true);
    full.train_until(4)?;
    let mut half_cfg = full_cfg.clone();
    half_cfg.output_dir = dir.path().join("half");
    let mut a = Trainer::new(half_cfg.clone())?.quiet(true);
    a.train_until(2)?;
    drop(a);
    let mut b = Trainer::resume(half_cfg)?.quiet(true);
    assert_eq!(b.iteration(), 2);
    b.train_until(4)?;
    assert_eq!(
        bits(&full.weights()?),
        bits(&b.weights()?),
        "resumed weights"
    );
    let r = full.evaluate()?;
    for k in ["PQ", "AP"] {
        assert!(r.extra.contains_key(k), "{k} missing: {:?}", r.extra);
    }
    assert_eq!(r.num_images, 2);
    // The saved model is the inference model (no text mapper, as the released checkpoints);
    // fine-tuning from it starts the text mapper from segkit's initialisation.
    let saved = full
        .model()
        .save(&dir.path().join("saved"), &full.weights()?)?;
    let st = segkit_core::checkpoint::StateDict::load(&saved)?;
    assert!(!st.keys().any(|k| k.starts_with("model.text_mapper.")));
    let mut ft = train_config(dir.path(), &dir.path().join("ft"), &all);
    ft.load_from = Some(saved);
    Trainer::new(ft)?.quiet(true).train_until(1)?;
    Ok(())
}

#[test]
fn semantic_only_trains_on_class_maps_other_tasks_need_panoptic_gt() -> TrainResult<()> {
    let dir = tempfile::tempdir().map_err(io)?;
    crate::data::write_toy_dataset(dir.path(), &[("train", 2), ("val", 1)], 32, 3, 5)?;
    let mut cfg = train_config(dir.path(), &dir.path().join("sem"), &["semantic"]);
    cfg.dataset = DatasetConfig::Custom {
        root: dir.path().to_path_buf(),
        train_split: "train".into(),
        val_split: "val".into(),
        ignore_index: 255,
    };
    cfg.iterations = 2;
    let mut t = Trainer::new(cfg.clone())?.quiet(true);
    t.train_until(2)?;
    assert!(t
        .history()
        .iter()
        .all(|r| r.losses.values().all(|v| v.is_finite())));
    // The same class maps with the panoptic task: a typed error that says what to do.
    if let ModelSpec::OneFormer(s) = &mut cfg.model {
        s.tasks = vec!["panoptic".into()];
    }
    cfg.output_dir = dir.path().join("pan");
    let e = Trainer::new(cfg)?.quiet(true).train_until(1).unwrap_err();
    assert!(e.to_string().contains("tasks"), "{e}");
    Ok(())
}

/// The trainer takes OneFormer's optimizer rules from the model unless the config's
/// `paramwise_cfg` / `clip_grad` replace them.
#[test]
fn optimizer_rules_come_from_the_model_or_the_config() -> TrainResult<()> {
    let dir = tempfile::tempdir().map_err(io)?;
    write_toy_coco_panoptic(dir.path(), &[("train", 2), ("val", 1)])?;
    let cfg = train_config(dir.path(), &dir.path().join("a"), &["semantic"]);
    let t = Trainer::new(cfg.clone())?.quiet(true);
    let q = "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query";
    let g = t.optimizer().group(&format!("{q}.weight"));
    assert_eq!((g.lr_mult, g.decay_mult), (0.1, 1.0));
    let g = t
        .optimizer()
        .group("model.transformer_module.queries_embedder.weight");
    assert_eq!((g.lr_mult, g.decay_mult), (1.0, 0.0));
    assert_eq!(t.clip_grad(), Some(&ClipGradConfig::l2(0.01)));
    let mut own = cfg.clone();
    own.paramwise_cfg = Some(
        serde_json::from_str(r#"{"custom_keys": {"encoder": {"lr_mult": 0.5}}}"#).map_err(io)?,
    );
    own.clip_grad = Some(serde_json::from_str(r#"{"max_norm": null}"#).map_err(io)?);
    let t = Trainer::new(own)?.quiet(true);
    let g = t.optimizer().group(&format!("{q}.weight"));
    assert_eq!((g.lr_mult, g.decay_mult), (0.5, 1.0));
    let g = t
        .optimizer()
        .group("model.transformer_module.queries_embedder.weight");
    assert_eq!((g.lr_mult, g.decay_mult), (1.0, 1.0));
    assert_eq!(t.clip_grad().and_then(|c| c.max_norm), None);
    Ok(())
}
