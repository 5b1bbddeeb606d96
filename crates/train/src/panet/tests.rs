//! PANet through the [`crate::Trainer`] on a toy COCO panoptic set (thing segments only):
//! the losses fall and a resumed run ends with the uninterrupted run's weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use segkit_models::PanetConfig;

use super::PanetSpec;
use crate::config::{
    DatasetConfig, LrPolicy, ModelSpec, OptimizerConfig, ScheduleConfig, TrainConfig,
};
use crate::{TrainError, TrainResult, Trainer};

const S: usize = 64;

fn io(e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: PathBuf::from("<toy coco>"),
        reason: e.to_string(),
    }
}

/// `n` images of a bright square (category 1) and a darker disc (category 2) on grey, in
/// the COCO panoptic layout; pixels outside both are void (segment 0).
fn write_toy(root: &Path, split: &str, n: usize) -> TrainResult<()> {
    let ann = root.join("annotations");
    let (img_dir, png_dir) = (
        root.join(format!("{split}2017")),
        ann.join(format!("panoptic_{split}2017")),
    );
    std::fs::create_dir_all(&img_dir).map_err(io)?;
    std::fs::create_dir_all(&png_dir).map_err(io)?;
    let (mut images, mut anns) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (sq, (cy, cx)) = (4 + 7 * i % 24, (40 - 3 * i % 10, 44));
        let (mut img, mut png) = (vec![100u8; S * S * 3], vec![0u8; S * S * 3]);
        for y in 0..S {
            for x in 0..S {
                let p = y * S + x;
                let seg = if (sq..sq + 18).contains(&y) && (sq..sq + 18).contains(&x) {
                    1
                } else if (y as i64 - cy as i64).pow(2) + (x as i64 - cx as i64).pow(2) <= 64 {
                    2
                } else {
                    0
                };
                if seg > 0 {
                    png[p * 3] = seg;
                    let v = if seg == 1 {
                        [240, 40, 40]
                    } else {
                        [20, 20, 200]
                    };
                    img[p * 3..p * 3 + 3].copy_from_slice(&v);
                }
            }
        }
        let name = format!("{i:04}.png");
        let save = |buf: Vec<u8>, path: PathBuf| {
            image::RgbImage::from_raw(S as u32, S as u32, buf)
                .ok_or_else(|| io("toy size"))?
                .save(path)
                .map_err(io)
        };
        save(img, img_dir.join(&name))?;
        save(png, png_dir.join(&name))?;
        let segs = serde_json::json!([
            {"id": 1, "category_id": 1, "iscrowd": 0},
            {"id": 2, "category_id": 2, "iscrowd": 0}
        ]);
        images.push(serde_json::json!({"id": i, "file_name": name, "width": S, "height": S}));
        anns.push(serde_json::json!({"image_id": i, "file_name": name, "segments_info": segs}));
    }
    let cats = serde_json::json!([
        {"id": 1, "name": "square", "isthing": 1},
        {"id": 2, "name": "disc", "isthing": 1}
    ]);
    let json = serde_json::json!({"images": images, "annotations": anns, "categories": cats});
    std::fs::write(
        ann.join(format!("panoptic_{split}2017.json")),
        json.to_string(),
    )
    .map_err(io)
}

/// A small PANet (R-50 body, 64-channel pyramid and heads, background + 2 classes).
fn small_config() -> PanetConfig {
    let mut c = PanetConfig::r50_fpn_2x_coco();
    c.name = "panet_toy_test".into();
    c.fpn.out_channels = 64;
    c.roi_heads = segkit_heads::panet::PanetRoiHeadsConfig::panet(3);
    c.roi_heads.box_head.conv_dim = 64;
    c.roi_heads.box_head.fc_dim = 64;
    if let Some(m) = c.roi_heads.mask_head.as_mut() {
        m.dim = 64;
    }
    c.meta.classes = vec!["__background__".into(), "square".into(), "disc".into()];
    c.meta.palette.truncate(3);
    c
}

fn train_config(root: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model: ModelSpec::Panet(Box::new(PanetSpec {
            preset: None,
            config: Some(Box::new(small_config())),
            train: None,
        })),
        dataset: DatasetConfig::CocoPanoptic {
            root: root.to_path_buf(),
            train_split: "train".into(),
            val_split: "train".into(),
        },
        pipeline: vec![],
        optimizer: OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
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
        iterations: 6,
        batch_size: 2,
        accumulate: 1,
        aux_loss_weight: None,
        eval_interval: 0,
        checkpoint_interval: 0,
        log_interval: 1,
        eval_batch_size: Some(1),
        val_limit: Some(2),
        seed: 3,
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
fn panet_trains_lowers_the_loss_and_resumes_exactly() -> TrainResult<()> {
    let dir = tempfile::tempdir().map_err(io)?;
    write_toy(dir.path(), "train", 4)?;
    let cfg = train_config(dir.path(), &dir.path().join("full"));
    let mut full = Trainer::new(cfg.clone())?.quiet(true);
    full.train_until(6)?;
    let h = full.history();
    let total = |i: usize| h[i].losses.values().sum::<f64>();
    for r in h {
        assert_eq!(r.losses.len(), 5, "{:?}", r.losses);
        assert!(r.losses.values().all(|v| v.is_finite()), "{:?}", r.losses);
    }
    eprintln!(
        "PANet toy losses: {:?} .. {:?}",
        h[0].losses,
        h[h.len() - 1].losses
    );
    let (first, last) = (total(0) + total(1), total(h.len() - 2) + total(h.len() - 1));
    assert!(last < first, "loss {first} -> {last}");
    let mut half = cfg.clone();
    half.output_dir = dir.path().join("half");
    let mut a = Trainer::new(half.clone())?.quiet(true);
    a.train_until(3)?;
    drop(a);
    let mut b = Trainer::resume(half)?.quiet(true);
    assert_eq!(b.iteration(), 3);
    b.train_until(6)?;
    assert_eq!(
        bits(&full.weights()?),
        bits(&b.weights()?),
        "resumed weights"
    );
    Ok(())
}
