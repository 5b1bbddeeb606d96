//! One way to ask "is a weight missing?" from every public loading entry point (issue 17):
//! `segkit_core::error::missing_weight` finds the same `MissingWeight` whether the error came
//! from a component built from a `StateDict` (segkit-backbones' ResNet), from
//! `segkit_models::ModelConfig::from_state_dict` / `load`, from `segkit::Segmenter::load` or
//! from a training run's `load_from`; `anyhow`'s chain reaches the segkit-core error, and
//! `{:#}` prints each message once.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use segkit::models::encoder_decoder::demo;
use segkit::train::config::{
    DatasetConfig, LrPolicy, ModelSpec, OptimizerConfig, ScheduleConfig, TrainConfig,
};
use segkit::{ModelConfig, Segmenter};
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::error::{missing_weight, Report};

/// The one helper: the missing key, found in `err`'s chain, and the same through `anyhow`.
fn assert_missing<E>(entry: &str, err: E, key: &str)
where
    E: std::error::Error + Send + Sync + 'static,
{
    let found = missing_weight(&err)
        .unwrap_or_else(|| panic!("{entry}: no missing weight in `{}`", Report(&err)));
    assert_eq!(found.key, key, "{entry}");
    let once = Report(&err).to_string();
    let a = anyhow::Error::new(err);
    // anyhow's chain holds the segkit-core error itself (downcastable, not a box).
    let core = a
        .chain()
        .find_map(|e| e.downcast_ref::<segkit_core::Error>())
        .unwrap_or_else(|| panic!("{entry}: no segkit_core::Error in the anyhow chain"));
    assert!(
        matches!(core, segkit_core::Error::MissingWeight { key: k, .. } if k == key),
        "{entry}: {core:?}"
    );
    assert_eq!(
        missing_weight(a.as_ref()).map(|m| m.key),
        Some(key),
        "{entry}"
    );
    let text = format!("{a:#}");
    assert_eq!(text, once, "{entry}: anyhow's {{:#}} and Report agree");
    assert_eq!(
        text.matches(&format!("missing weight `{key}`")).count(),
        1,
        "{entry}: each message once: {text}"
    );
}

/// Every variable of a `VarMap` as a state dict, without `drop`.
fn state_dict_without(map: &VarMap, drop: &str) -> StateDict {
    let mut sd = StateDict::new();
    for (k, v) in map.data().lock().unwrap().iter() {
        if k != drop {
            sd.insert(k.clone(), v.as_tensor().clone());
        }
    }
    assert!(!sd.contains(drop) && !sd.is_empty());
    sd
}

#[test]
fn a_component_built_from_a_state_dict() {
    let cfg = ResNetConfig {
        base_channels: 4,
        ..ResNetConfig::torchvision(18)
    };
    let map = VarMap::new();
    ResNet::new(
        &cfg,
        VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let sd = state_dict_without(&map, "layer1.0.conv1.weight");
    let err = checkpoint::load_model(&sd, DType::F32, &Device::Cpu, |vb| ResNet::new(&cfg, vb))
        .err()
        .unwrap();
    assert_missing("ResNet from a StateDict", err, "layer1.0.conv1.weight");
    // The typed `StateDict::require` says the same.
    let err = sd.require("layer1.0.conv1.weight").unwrap_err();
    assert_missing("StateDict::require", err, "layer1.0.conv1.weight");
}

/// The demo model's config, its weights without `decode_head.conv_seg.weight` saved as
/// `dir/model.safetensors`, and `dir/config.json`.
fn demo_dir(dir: &Path) -> ModelConfig {
    let cfg = ModelConfig::EncoderDecoder(Box::new(demo::demo_config()));
    let map = VarMap::new();
    cfg.build(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))
        .unwrap();
    let sd = state_dict_without(&map, "decode_head.conv_seg.weight");
    sd.save_safetensors(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    cfg
}

const KEY: &str = "decode_head.conv_seg.weight";

#[test]
fn model_config_segmenter_and_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_dir(dir.path());
    let path = dir.path().join("model.safetensors");
    let dev = Device::Cpu;

    let sd = StateDict::load(&path).unwrap();
    let err = cfg.from_state_dict("demo", &sd, &path, &dev).err().unwrap();
    assert_missing("ModelConfig::from_state_dict", err, KEY);
    let err = cfg.load("demo", &path, &dev).err().unwrap();
    assert!(
        Report(&err).to_string().starts_with("loading `demo` from "),
        "{}",
        Report(&err)
    );
    assert_missing("ModelConfig::load", err, KEY);

    let err = Segmenter::load(dir.path(), &dev).err().unwrap();
    assert_missing("Segmenter::load", err, KEY);

    // A training run whose `load_from` lacks the key.
    let data = tempfile::tempdir().unwrap();
    segkit::train::data::write_toy_dataset(data.path(), &[("train", 4), ("val", 2)], 32, 3, 1)
        .unwrap();
    let ModelConfig::EncoderDecoder(seg) = cfg else {
        unreachable!()
    };
    let out = tempfile::tempdir().unwrap();
    let train = TrainConfig {
        model: ModelSpec::Config { config: seg },
        dataset: DatasetConfig::Custom {
            root: data.path().to_path_buf(),
            train_split: "train".into(),
            val_split: "val".into(),
            ignore_index: 255,
        },
        pipeline: serde_json::from_str("[]").unwrap(),
        optimizer: OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        },
        paramwise_cfg: None,
        clip_grad: None,
        schedule: ScheduleConfig {
            policy: LrPolicy::Poly {
                power: 0.9,
                min_lr: 1e-4,
            },
            warmup: None,
        },
        iterations: 1,
        batch_size: 2,
        accumulate: 1,
        aux_loss_weight: Some(0.4),
        eval_interval: 0,
        checkpoint_interval: 0,
        log_interval: 1,
        eval_batch_size: Some(2),
        val_limit: None,
        seed: 1,
        load_from: Some(path.clone()),
        pretrained: Vec::new(),
        output_dir: out.path().join("run"),
        source: None,
    };
    let err = segkit::train::Trainer::new(train).err().unwrap();
    assert_missing("Trainer::new with load_from", err, KEY);
}

#[test]
fn the_facade_result_takes_every_crates_error() {
    fn facade() -> segkit::Result<()> {
        let core: segkit_core::Result<()> = Err(segkit_core::Error::InvalidArgument("x".into()));
        let data: segkit::data::Result<()> = Ok(());
        let losses: segkit::losses::Result<()> = Ok(());
        let oneformer: segkit::oneformer_parts::Result<()> = Ok(());
        data?;
        losses?;
        oneformer?;
        let train: segkit::train::TrainResult<()> = Err(segkit::train::TrainError::Diverged {
            iteration: 3,
            loss: f64::NAN,
        });
        if let Err(e) = train {
            let e: segkit::Error = e.into();
            let src = std::error::Error::source(&e).unwrap();
            assert!(src.downcast_ref::<segkit::train::TrainError>().is_some());
            assert_eq!(
                Report(&e).to_string(),
                "training: training diverged at iteration 3: loss NaN"
            );
        }
        core?;
        Ok(())
    }
    assert!(matches!(
        facade(),
        Err(segkit::Error::Core(segkit_core::Error::InvalidArgument(_)))
    ));
}
