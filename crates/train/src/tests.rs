//! Training tests on a tiny model and a toy dataset (fast in release): the loss falls, a
//! resumed run equals the uninterrupted one bit for bit, a failed checkpoint write keeps the
//! previous checkpoint, and the whole network's gradients (segkit's custom kernels, f32)
//! match a reference through candle's own ops in f64.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::config::*;
use crate::data::write_toy_dataset;
use crate::{checkpoint, Trainer};
use segkit_models::encoder_decoder::demo;
use segkit_models::HeadConfig;
use segkit_models::{BackboneConfig, EncoderDecoder, SegmentorConfig};

fn tiny_model(dropout: f32) -> SegmentorConfig {
    let mut c = demo::demo_config();
    c.name = "tiny".into();
    let BackboneConfig::ResNet(r) = &mut c.backbone else {
        panic!("the demo model has a ResNet backbone");
    };
    r.base_channels = 4;
    r.stem = segkit_backbones::Stem::Deep { width: 4 };
    for h in [Some(&mut c.decode_head), c.auxiliary_head.as_mut()]
        .into_iter()
        .flatten()
    {
        let b = h.base_mut();
        b.channels = 8;
        b.num_classes = 3;
        b.dropout_ratio = dropout;
    }
    if let HeadConfig::Psp(p) = &mut c.decode_head {
        p.pool_scales = vec![1, 2, 3];
    }
    c.meta.classes = vec!["bg".into(), "red".into(), "green".into()];
    c.meta.palette = vec![[0, 0, 0], [255, 0, 0], [0, 255, 0]];
    c.data_preprocessor.size = Some([32, 32]);
    c
}

fn toy_data(root: &Path) {
    write_toy_dataset(root, &[("train", 24), ("val", 4)], 32, 3, 7).unwrap();
}

fn tiny_config(root: &Path, out: &Path, optimizer: OptimizerConfig) -> TrainConfig {
    TrainConfig {
        model: ModelSpec::Config {
            config: Box::new(tiny_model(0.1)),
        },
        dataset: DatasetConfig::Custom {
            root: root.to_path_buf(),
            train_split: "train".into(),
            val_split: "val".into(),
            ignore_index: 255,
        },
        pipeline: serde_json::from_str(
            r#"[
                {"type": "RandomResize", "scale": [32, 32], "ratio_range": [0.75, 1.5], "keep_ratio": true},
                {"type": "RandomCrop", "crop_size": [32, 32], "cat_max_ratio": 0.9},
                {"type": "RandomFlip", "prob": 0.5},
                {"type": "PhotoMetricDistortion"}
            ]"#,
        )
        .unwrap(),
        optimizer,
        paramwise_cfg: None,
        clip_grad: None,
        schedule: ScheduleConfig {
            policy: LrPolicy::Poly {
                power: 0.9,
                min_lr: 1e-5,
            },
            warmup: Some(WarmupConfig {
                iters: 2,
                start_factor: 0.5,
            }),
        },
        iterations: 6,
        batch_size: 3,
        accumulate: 1,
        aux_loss_weight: Some(0.4),
        eval_interval: 0,
        checkpoint_interval: 0,
        log_interval: 1,
        eval_batch_size: Some(2),
        val_limit: None,
        seed: 11,
        load_from: None,
        pretrained: Vec::new(),
        output_dir: out.to_path_buf(),
        source: None,
    }
}

fn adamw() -> OptimizerConfig {
    OptimizerConfig::AdamW {
        lr: 5e-3,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
        decay_norm_and_bias: false,
    }
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    segkit_core::testing::f32_bits(t).unwrap()
}

/// The metrics log without its timing fields.
fn log_without_times(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(crate::trainer::LOG_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("elapsed");
                o.remove("sec_per_iter");
            }
            v
        })
        .collect()
}

#[test]
fn loss_falls_on_a_toy_dataset() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(dir.path());
    let mut cfg = tiny_config(dir.path(), &dir.path().join("out"), adamw());
    cfg.optimizer = OptimizerConfig::AdamW {
        lr: 1e-2,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 1e-4,
        decay_norm_and_bias: false,
    };
    cfg.iterations = 60;
    cfg.batch_size = 4;
    let mut t = Trainer::new(cfg).unwrap().quiet(true);
    let s = t.run().unwrap();
    let h: Vec<f64> = t.history().iter().map(|r| r.loss).collect();
    let first = h[..5].iter().sum::<f64>() / 5.0;
    let last = h[h.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.8 * first, "loss {first} -> {last}: {h:?}");
    assert!(s.eval.aacc > 0.5, "{:?}", s.eval);
    assert!(dir.path().join("out/model.safetensors").is_file());
    // The written model loads strictly and predicts as the trainer's eval model.
    let m = EncoderDecoder::from_checkpoint(
        t.segmentor_config().unwrap(),
        dir.path().join("out/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let x = Tensor::ones((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let a = m.encode_decode(&x).unwrap();
    let b = t.eval_model().unwrap().encode_decode(&x).unwrap();
    assert_eq!(bits(&a), bits(&b));
}

fn resume_case(optimizer: OptimizerConfig, accumulate: usize) {
    let dir = tempfile::tempdir().unwrap();
    toy_data(dir.path());
    let mut full = tiny_config(dir.path(), &dir.path().join("full"), optimizer.clone());
    full.accumulate = accumulate;
    let mut split = tiny_config(dir.path(), &dir.path().join("split"), optimizer);
    split.accumulate = accumulate;
    let mut a = Trainer::new(full).unwrap().quiet(true);
    a.run().unwrap();
    {
        let mut b = Trainer::new(split.clone()).unwrap().quiet(true);
        b.train_until(4).unwrap();
        assert_eq!(b.iteration(), 4);
        // Take two more steps that are never saved: the resume must not see them.
        b.step().unwrap();
        b.step().unwrap();
    }
    let mut c = Trainer::resume(split).unwrap().quiet(true);
    assert_eq!(c.iteration(), 4);
    c.run().unwrap();
    let (wa, wc) = (a.weights().unwrap(), c.weights().unwrap());
    assert_eq!(wa.len(), wc.len());
    for (k, t) in &wa {
        assert_eq!(bits(t), bits(&wc[k]), "weight {k} differs after resume");
    }
    let la: Vec<u64> = a.history()[4..].iter().map(|r| r.loss.to_bits()).collect();
    let lc: Vec<u64> = c.history().iter().map(|r| r.loss.to_bits()).collect();
    assert_eq!(la, lc, "losses after the resume differ");
    assert_eq!(
        log_without_times(&dir.path().join("full")),
        log_without_times(&dir.path().join("split"))
    );
}

#[test]
fn resume_continues_exactly_sgd() {
    resume_case(sgd(), 1);
}

#[test]
fn resume_continues_exactly_adamw_with_accumulation() {
    resume_case(adamw(), 2);
}

#[test]
fn failed_checkpoint_write_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(dir.path());
    let cfg = tiny_config(dir.path(), &dir.path().join("out"), sgd());
    let mut t = Trainer::new(cfg.clone()).unwrap().quiet(true);
    t.train_until(2).unwrap();
    let good = t.weights().unwrap();
    t.step().unwrap();
    let (bytes, path) = t.checkpoint_bytes().unwrap();
    let e = checkpoint::write_atomic_with(&path, &bytes, |f, b| {
        use std::io::Write;
        f.write_all(&b[..b.len() / 3])?;
        Err(std::io::Error::other("simulated crash"))
    })
    .unwrap_err();
    assert!(e.to_string().contains("simulated crash"), "{e}");
    let r = Trainer::resume(cfg).unwrap();
    assert_eq!(r.iteration(), 2);
    for (k, w) in r.weights().unwrap() {
        assert_eq!(bits(&w), bits(&good[&k]), "{k}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

/// The gradients of the whole training forward pass (ResNet with deep stem and max pool,
/// PSP pyramid with adaptive pools and bilinear upsampling, FCN auxiliary head, BatchNorm in
/// training mode, cross-entropy on upsampled logits) through segkit's f32 kernels, against
/// the same network in f64, where every op takes candle's own differentiable path.
#[test]
fn network_gradients_match_an_f64_reference() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(dir.path());
    let mut cfg = tiny_config(dir.path(), &dir.path().join("out"), sgd());
    cfg.model = ModelSpec::Config {
        config: Box::new(tiny_model(0.0)),
    };
    let t = Trainer::new(cfg).unwrap().quiet(true);
    let w = t.weights().unwrap();
    let model_cfg = t.segmentor_config().unwrap().clone();
    let dev = Device::Cpu;
    let run = |dt: DType| -> BTreeMap<String, Tensor> {
        let vm = VarMap::new();
        let m = EncoderDecoder::new(&model_cfg, VarBuilder::from_varmap(&vm, dt, &dev)).unwrap();
        for (k, v) in vm.data().lock().unwrap().iter() {
            v.set(&w[k].to_dtype(dt).unwrap()).unwrap();
        }
        let x = Tensor::arange(0f32, (2 * 3 * 32 * 32) as f32, &dev)
            .unwrap()
            .reshape((2, 3, 32, 32))
            .unwrap()
            .affine(1.0 / 997.0, 0.0)
            .unwrap()
            .sin()
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let y: Vec<u32> = (0..2 * 32 * 32).map(|i| ((i / 7) % 3) as u32).collect();
        let y = Tensor::from_vec(y, (2, 32, 32), &dev).unwrap();
        let out = m.forward_t(&x, true).unwrap();
        let ce = segkit_losses::CrossEntropyLoss::mmseg();
        let up = |t: &Tensor| segkit_core::ops::resize_bilinear(t, (32, 32), false).unwrap();
        let loss = (ce.forward(&up(out.logits()), &y).unwrap()
            + (ce.forward(&up(out.aux_logits().unwrap()), &y).unwrap() * 0.4).unwrap())
        .unwrap();
        // The trainer's loss computation gives the same total.
        let named = crate::losses::compute(&model_cfg, &out, &y, 255).unwrap();
        assert_eq!(
            named
                .total
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            loss.to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        );
        let g = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let grads = data
            .iter()
            .filter(|(k, _)| !k.contains("running"))
            .map(|(k, v)| {
                let gt = g
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {k}"));
                (k.clone(), gt.to_dtype(DType::F64).unwrap())
            })
            .collect();
        grads
    };
    let g32 = run(DType::F32);
    let g64 = run(DType::F64);
    assert_eq!(g32.len(), g64.len());
    let mut worst = (0f64, String::new());
    for (k, a) in &g32 {
        let b = &g64[k];
        let diff = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let norm = b
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let rel = (diff / norm.max(1e-30)).sqrt();
        if norm > 1e-20 && rel > worst.0 {
            worst = (rel, k.clone());
        }
    }
    assert!(
        worst.0 < 1e-3,
        "largest relative gradient error {} at {}",
        worst.0,
        worst.1
    );
}

/// `tiny_model` with a DANet or an EncNet decode head (3 classes, 8 channels).
fn tiny_with_head(head: &str) -> SegmentorConfig {
    let mut c = tiny_model(0.1);
    c.decode_head = serde_json::from_str(head).unwrap();
    c.validate().unwrap();
    c
}

fn tiny_danet() -> SegmentorConfig {
    tiny_with_head(
        r#"{"type": "DAHead", "base": {"channels": 8, "num_classes": 3, "in_index": 3},
            "pam_channels": 4}"#,
    )
}

fn tiny_encnet() -> SegmentorConfig {
    tiny_with_head(
        r#"{"type": "EncHead", "base": {"channels": 8, "num_classes": 3, "in_index": [1, 2, 3],
            "input_transform": "multiple_select"}, "num_codes": 4}"#,
    )
}

/// DANet and EncNet train with every loss mmseg gives them, logged by mmseg's names, and
/// their attention / encoding parameters learn (their softmax has a backward pass).
#[test]
fn danet_and_encnet_train_with_every_named_loss() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(dir.path());
    let cases = [
        (
            tiny_danet(),
            vec![
                "aux.loss_ce",
                "decode.cam.loss_ce",
                "decode.pam.loss_ce",
                "decode.pam_cam.loss_ce",
            ],
            "decode_head.pam.query_project.weight",
        ),
        (
            tiny_encnet(),
            vec!["aux.loss_ce", "decode.loss_ce", "decode.loss_se"],
            "decode_head.enc_module.encoding.0.codewords",
        ),
    ];
    for (i, (model, names, learns)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        let mut cfg = tiny_config(dir.path(), &out, adamw());
        cfg.model = ModelSpec::Config {
            config: Box::new(model),
        };
        cfg.aux_loss_weight = None;
        cfg.iterations = 3;
        let mut t = Trainer::new(cfg).unwrap().quiet(true);
        let before = t.weights().unwrap();
        t.run().unwrap();
        let after = t.weights().unwrap();
        for k in [learns, "decode_head.conv_seg.weight"] {
            assert_ne!(bits(&before[k]), bits(&after[k]), "{k} did not change");
        }
        for r in t.history() {
            let keys: Vec<&str> = r.losses.keys().map(String::as_str).collect();
            assert_eq!(keys, names);
            let sum: f64 = r.losses.values().sum();
            assert!((sum - r.loss).abs() < 1e-5 * r.loss.abs().max(1.0), "{r:?}");
            assert!((r.loss_decode + r.loss_aux - r.loss).abs() < 1e-5 * r.loss.max(1.0));
        }
        let log = log_without_times(&out);
        let train = log.iter().find(|v| v["type"] == "train").unwrap();
        for n in &names {
            assert!(train[*n].as_f64().unwrap() > 0.0, "{n} missing in {train}");
        }
    }
}

/// The model config's loss lists replace mmseg's defaults; the training config's
/// `aux_loss_weight` replaces the auxiliary weights (0 drops them).
#[test]
fn loss_configuration_overrides() {
    let dev = Device::Cpu;
    let mut cfg = tiny_danet();
    for h in [Some(&mut cfg.decode_head), cfg.auxiliary_head.as_mut()]
        .into_iter()
        .flatten()
    {
        h.base_mut().dropout_ratio = 0.0;
    }
    let m = EncoderDecoder::new(&cfg, VarBuilder::zeros(DType::F32, &dev)).unwrap();
    let x = Tensor::ones((2, 3, 32, 32), DType::F32, &dev).unwrap();
    let y: Vec<u8> = (0..2 * 32 * 32).map(|i| [0, 1, 2, 255][i % 4]).collect();
    let y = Tensor::from_vec(y, (2, 32, 32), &dev).unwrap();
    let out = m.forward_t(&x, true).unwrap();
    let value = |plan: &crate::LossPlan, name: &str| -> Option<f32> {
        let l = plan.compute(&out, &y, 255).unwrap();
        l.get(name).map(|t| t.to_scalar::<f32>().unwrap())
    };
    let default = crate::LossPlan::new(&cfg, None).unwrap();
    let aux = value(&default, "aux.loss_ce").unwrap();
    // Zero weights: every logit 0, CE = ln 3 over the 3/4 labelled pixels, times 0.4.
    assert!((aux - 0.4 * 0.75 * 3f32.ln()).abs() < 1e-6, "{aux}");
    let doubled = crate::LossPlan::new(&cfg, Some(0.8)).unwrap();
    assert!((value(&doubled, "aux.loss_ce").unwrap() - 2.0 * aux).abs() < 1e-6);
    let none = crate::LossPlan::new(&cfg, Some(0.0)).unwrap();
    assert!(!none.names().iter().any(|n| n.starts_with("aux.")));
    // A JSON override: only the fused logits, weighted 0.5, under another name.
    let mut json = serde_json::to_value(&cfg).unwrap();
    json["losses"] = serde_json::json!({"decode_head": [{"output": "logits", "losses": [
        {"type": "CrossEntropyLoss", "loss_weight": 0.5, "loss_name": "loss_fused"}]}]});
    let custom: SegmentorConfig = serde_json::from_value(json.clone()).unwrap();
    let plan = crate::LossPlan::new(&custom, None).unwrap();
    assert_eq!(plan.names(), ["decode.loss_fused", "aux.loss_ce"]);
    let fused = value(&plan, "decode.loss_fused").unwrap();
    let full = value(&default, "decode.pam_cam.loss_ce").unwrap();
    assert!((fused - 0.5 * full).abs() < 1e-6, "{fused} vs {full}");
    // An output the head does not have is refused when the config is read.
    json["losses"]["decode_head"][0]["output"] = "se".into();
    let e = SegmentorConfig::from_json(&json.to_string()).unwrap_err();
    assert!(e.to_string().contains("no output `se`"), "{e}");
}

/// `pretrained`: the variables under `to` take the file's tensors under `prefix` (a backbone
/// saved by another model, here under `encoder.`), bit for bit; every other variable keeps the
/// run's initialisation; a prefix that matches no variable, a missing key and a shape that
/// differs are typed errors naming the field, the key and the file.
#[test]
fn pretrained_sets_the_variables_under_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(dir.path());
    let base = tiny_config(dir.path(), &dir.path().join("a"), sgd());
    let init = Trainer::new(base.clone()).unwrap().weights().unwrap();
    // A "pretrained backbone": the initial backbone tensors plus 1, under another prefix.
    let mut file: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, v) in &init {
        if let Some(rest) = k.strip_prefix("backbone.") {
            file.insert(format!("encoder.{rest}"), (v + 1.0).unwrap());
        }
    }
    assert!(file.len() > 10);
    let path = dir.path().join("backbone.safetensors");
    candle_core::safetensors::save(&file.clone().into_iter().collect(), &path).unwrap();
    let with = |prefix: &str, to: &str, path: &Path, out: &str| {
        let mut c = base.clone();
        c.output_dir = dir.path().join(out);
        c.pretrained = vec![PretrainedConfig {
            path: path.to_path_buf(),
            prefix: prefix.into(),
            to: to.into(),
        }];
        c
    };
    let got = Trainer::new(with("encoder.", "backbone.", &path, "b"))
        .unwrap()
        .weights()
        .unwrap();
    assert_eq!(got.len(), init.len());
    for (k, v) in &got {
        let want = match k.strip_prefix("backbone.") {
            Some(rest) => &file[&format!("encoder.{rest}")],
            None => &init[k],
        };
        assert_eq!(bits(v), bits(want), "{k}");
    }
    // `to` matching nothing.
    let e = Trainer::new(with("encoder.", "backbon.", &path, "c"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`pretrained[0].to`") && e.contains("backbon."),
        "{e}"
    );
    // A key the file lacks: the error names the key and the file.
    let e = Trainer::new(with("enc.", "backbone.", &path, "d"))
        .err()
        .unwrap();
    let chain = format!("{e} {:?}", std::error::Error::source(&e));
    assert!(chain.contains("backbone.safetensors"), "{chain}");
    assert!(chain.contains("enc."), "{chain}");
    // A tensor of another shape.
    let mut bad = file.clone();
    let (k0, v0) = bad
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    bad.insert(
        k0.clone(),
        v0.flatten_all().unwrap().narrow(0, 0, 1).unwrap(),
    );
    let bad_path = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&bad.into_iter().collect(), &bad_path).unwrap();
    let e = Trainer::new(with("encoder.", "backbone.", &bad_path, "e"))
        .err()
        .unwrap();
    let chain = format!("{e} {:?}", std::error::Error::source(&e));
    assert!(
        chain.contains(&k0) && chain.contains("bad.safetensors"),
        "{chain}"
    );
}
