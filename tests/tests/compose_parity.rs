//! Composition parity: mmseg's `SwinTransformer` (tiny) + `DAHead` (+ the auxiliary
//! `FCNHead` on stage 3), built by mmsegmentation 1.2.2 from one config dict, against segkit's
//! `EncoderDecoder` built from the equivalent segkit config
//! (tests/fixtures/compose/segkit_config.json); fixtures: tests/parity/gen_compose.py.
//!
//! Weights: mmseg's state dict rebuilt from its saved key list (every key and shape, in
//! tests/fixtures/compose/mmseg_state_dict_keys.json) with each tensor's synthetic value
//! (`segkit_core::testing`, the function tests/parity/synth.py filled the mmseg model with)
//! and mmseg's own `relative_position_index` buffers; the segmentor is built from it strictly,
//! so the key sets must be equal, names and shapes. Every element of every head's logits
//! (`logits` = DAHead's fused `pam_cam`, `pam_logits`, `cam_logits`, `aux_logits`) is compared,
//! eval mode, at 1x3x512x512 and at 1x3x483x357 (neither a multiple of the patch nor of 32:
//! every padding path), within `1e-4 * max(1, max|ref|)`; and the four normalised backbone
//! outputs at 1x3x61x45 (maps smaller than a window, odd merges), f32 (fused CPU kernels) and
//! f64 (the composed tensor ops other devices and training use), and in training mode without
//! drop path.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use segkit::core::checkpoint::{is_ignored_key, StateDict, WeightTracker};
use segkit::core::testing::{synthetic_input, synthetic_tensor, synthetic_var_builder};
use segkit::core::Backbone;
use segkit::heads::{DaHead, DaHeadConfig, FcnHead, FcnHeadConfig, InIndex};
use segkit::{BackboneConfig, EncoderDecoder, HeadConfig, ModelConfig, SegmentorConfig};
use segkit_backbones::{Swin, SwinConfig, SwinKeyStyle};
use segkit_tests::{assert_close, fixture_path, get, load_fixture};

const NUM_CLASSES: usize = 19;
const INDEX_SUFFIX: &str = ".relative_position_index";

fn read(rel: &str) -> String {
    let p = fixture_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The segkit config of the composed model, as a user writes it (a `ModelConfig`, so
/// `segkit dump --config` runs it too).
fn config() -> SegmentorConfig {
    match ModelConfig::from_json(&read("compose/segkit_config.json")).unwrap() {
        ModelConfig::EncoderDecoder(c) => {
            c.validate().unwrap();
            *c
        }
        other => panic!("not an EncoderDecoder config: {}", other.type_name()),
    }
}

/// Every key of mmseg's `state_dict()` with its shape, in mmseg's order.
fn mmseg_keys() -> Vec<(String, Vec<usize>)> {
    serde_json::from_str(&read("compose/mmseg_state_dict_keys.json")).unwrap()
}

fn fixture(name: &str) -> HashMap<String, Tensor> {
    load_fixture(&format!("compose/{name}.safetensors"))
}

/// mmseg's state dict as gen_compose.py filled it: synthetic values, mmseg's index buffers
/// (int64, from the fixture), BatchNorm's `num_batches_tracked` (int64 0).
fn mmseg_state_dict() -> StateDict {
    let index = get(
        &fixture("swin_danet_1x3x512x512"),
        "relative_position_index",
    )
    .clone();
    let dev = Device::Cpu;
    let mut sd = StateDict::new();
    for (key, shape) in mmseg_keys() {
        let t = if key.ends_with(INDEX_SUFFIX) {
            assert_eq!(index.dims(), shape.as_slice(), "{key}");
            index.clone()
        } else if is_ignored_key(&key) {
            Tensor::zeros(shape.as_slice(), DType::I64, &dev).unwrap()
        } else {
            synthetic_tensor(&key, shape.as_slice(), DType::F32, &dev).unwrap()
        };
        sd.insert(key, t);
    }
    sd
}

/// The model mmseg-saved weights give: strict loading (every key used, every weight found).
fn model() -> EncoderDecoder {
    EncoderDecoder::from_state_dict(&config(), &mmseg_state_dict(), &Device::Cpu).unwrap()
}

#[test]
fn json_config_equals_the_typed_one_and_mmseg_backbone_dict() {
    let cfg = config();
    assert_eq!(cfg.backbone, BackboneConfig::Swin(SwinConfig::mmseg_tiny()));
    // The DANet preset on Swin's features, on purpose: the preset was designed for a
    // ResNet's 2048 channels at stride 8, so the JSON config (no `designed_for`) checks
    // nothing.
    let mut da = DaHeadConfig::danet_r50_d8(NUM_CLASSES);
    da.base.designed_for = None;
    assert_eq!(cfg.decode_head, HeadConfig::Da(da));
    let mut aux = FcnHeadConfig::fcn_r50_d8(NUM_CLASSES);
    aux.base.designed_for = None;
    aux.base.channels = 256;
    aux.base.in_index = InIndex::One(2);
    aux.num_convs = 1;
    aux.concat_input = false;
    assert_eq!(cfg.auxiliary_head, Some(HeadConfig::Fcn(aux)));
    assert_eq!(
        cfg.output_names(),
        ["logits", "aux_logits", "pam_logits", "cam_logits"]
    );
    // The same heads as mmseg's DANet preset (its auxiliary FCN head reads stage 3 too):
    // swapping the preset's backbone composes this model.
    let mut danet = SegmentorConfig::preset("danet_r50-d8_cityscapes-512x1024").unwrap();
    for h in [Some(&mut danet.decode_head), danet.auxiliary_head.as_mut()]
        .into_iter()
        .flatten()
    {
        h.base_mut().designed_for = None;
    }
    assert_eq!(
        (&danet.decode_head, &danet.auxiliary_head),
        (&cfg.decode_head, &cfg.auxiliary_head)
    );
    // mmseg's own backbone dict (with `strides`, `act_cfg`, `norm_cfg`, which segkit's Swin
    // fixes) reads as the same backbone.
    let mmseg: serde_json::Value =
        serde_json::from_str(&read("compose/mmseg_config.json")).unwrap();
    let bb: BackboneConfig = serde_json::from_value(mmseg["backbone"].clone()).unwrap();
    assert_eq!(bb, cfg.backbone);
    // Round trip through segkit's own serialisation (what a model directory's config.json
    // holds).
    let model = ModelConfig::from(cfg.clone());
    assert_eq!(
        ModelConfig::from_json(&model.to_json_pretty()).unwrap(),
        model
    );
}

#[test]
fn swin_config_key_style_defaults() {
    // In the segmentor, "SwinTransformer" means mmseg's layout unless told otherwise ...
    let mm: BackboneConfig = serde_json::from_str(r#"{"type": "SwinTransformer"}"#).unwrap();
    let BackboneConfig::Swin(mm) = mm else {
        panic!("not a Swin: {mm:?}")
    };
    assert_eq!(mm.key_style, SwinKeyStyle::Mmseg);
    assert_eq!(mm.out_stage_indices().unwrap(), [1, 2, 3, 4]); // mmseg's default: every stage
    let hf: BackboneConfig =
        serde_json::from_str(r#"{"type": "SwinTransformer", "key_style": "Hf"}"#).unwrap();
    let BackboneConfig::Swin(hf) = hf else {
        panic!("not a Swin: {hf:?}")
    };
    assert_eq!(hf.key_style, SwinKeyStyle::Hf);
    assert_eq!(hf.out_stage_indices().unwrap(), [4]); // HF's default: the last stage
                                                      // ... while a bare SwinConfig (an HF backbone_config) keeps meaning HF's.
    let plain: SwinConfig = serde_json::from_str(r#"{"embed_dim": 96}"#).unwrap();
    assert_eq!(plain.key_style, SwinKeyStyle::Hf);
    // mmseg's argument names are aliases of HF's.
    let aliased: SwinConfig = serde_json::from_str(
        r#"{"embed_dims": 128, "in_channels": 4, "pretrain_img_size": 384, "drop_rate": 0.1,
            "attn_drop_rate": 0.2, "use_abs_pos_embed": true}"#,
    )
    .unwrap();
    assert_eq!(
        (aliased.embed_dim, aliased.num_channels, aliased.image_size),
        (128, 4, [384, 384])
    );
    assert_eq!(
        (
            aliased.hidden_dropout_prob,
            aliased.attention_probs_dropout_prob,
            aliased.use_absolute_embeddings
        ),
        (0.1, 0.2, true)
    );
    // mmseg's out_indices count stages from 0: 4 is out of range for Swin-T.
    let json = r#"{"name": "x", "backbone": {"type": "SwinTransformer", "out_indices": [0, 4]},
        "decode_head": {"type": "FCNHead", "base": {"channels": 8, "num_classes": 2}}}"#;
    let e = match SegmentorConfig::from_json(json) {
        Err(e) => e.to_string(),
        Ok(c) => c.backbone.feature_specs().unwrap_err().to_string(),
    };
    assert!(e.contains("out index 4"), "{e}");
}

/// The key set segkit's model reads is mmseg's, names and shapes (BatchNorm's
/// `num_batches_tracked` counters, which change nothing at inference, are the only keys
/// segkit does not read; the strict loader skips them by name).
#[test]
fn key_set_equals_mmseg_state_dict() {
    let keys = mmseg_keys();
    let sd = mmseg_state_dict();
    let tracker = WeightTracker::new(&sd);
    let built = EncoderDecoder::new(&config(), tracker.var_builder(DType::F32, &Device::Cpu));
    let errors = tracker.take_errors();
    assert!(errors.is_empty(), "{errors:?}");
    built.unwrap();
    let used = tracker.used_keys();
    let mut want: Vec<String> = keys
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !is_ignored_key(k))
        .collect();
    want.sort();
    assert_eq!(used, want);
    assert!(
        tracker.unused_keys().is_empty(),
        "{:?}",
        tracker.unused_keys()
    );
    let ignored: Vec<&String> = keys
        .iter()
        .map(|(k, _)| k)
        .filter(|k| is_ignored_key(k))
        .collect();
    assert_eq!(ignored.len(), 5, "{ignored:?}"); // one per BatchNorm of the two heads
    let indices = keys
        .iter()
        .filter(|(k, _)| k.ends_with(INDEX_SUFFIX))
        .count();
    assert_eq!(indices, 12); // one per block of Swin-T: 2 + 2 + 6 + 2
    eprintln!("{} mmseg keys, {} read by segkit", keys.len(), used.len());
}

fn check_segmentor(name: &str, shape: (usize, usize, usize, usize)) {
    let f = fixture(name);
    let model = model();
    let x = synthetic_input("input", shape, &Device::Cpu).unwrap();
    let out = model.forward_t(&x, false).unwrap();
    let named = out.named();
    let produced: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
    assert_eq!(produced, config().output_names());
    for (n, t) in named {
        assert_close(&format!("{name} {n}"), t, get(&f, n));
    }
}

#[test]
fn swin_danet_1x3x512x512() {
    check_segmentor("swin_danet_1x3x512x512", (1, 3, 512, 512));
}

#[test]
fn swin_danet_1x3x483x357() {
    check_segmentor("swin_danet_1x3x483x357", (1, 3, 483, 357));
}

/// The same model composed by hand in Rust, as docs/COMPOSING.md shows: the backbone, its
/// `feature_specs()`, heads built from them; with weights under mmseg's prefixes.
#[test]
fn composed_in_rust_equals_the_config_model() {
    let f = fixture("swin_danet_1x3x483x357");
    let vb = synthetic_var_builder(DType::F32, &Device::Cpu);
    let backbone = Swin::new(&SwinConfig::mmseg_tiny(), vb.pp("backbone")).unwrap();
    let specs = backbone.feature_specs();
    // The ResNet presets on Swin's features, on purpose (`designed_for` off).
    let mut da_cfg = DaHeadConfig::danet_r50_d8(NUM_CLASSES);
    da_cfg.base.designed_for = None;
    let head = DaHead::new(&da_cfg, &specs, vb.pp("decode_head")).unwrap();
    let mut aux_cfg = FcnHeadConfig::fcn_r50_d8(NUM_CLASSES);
    aux_cfg.base.designed_for = None;
    aux_cfg.base.channels = 256;
    aux_cfg.base.in_index = InIndex::One(2);
    aux_cfg.num_convs = 1;
    aux_cfg.concat_input = false;
    let aux = FcnHead::new(&aux_cfg, &specs, vb.pp("auxiliary_head")).unwrap();
    let x = synthetic_input("input", (1, 3, 483, 357), &Device::Cpu).unwrap();
    let feats = backbone.forward_features(&x, false).unwrap();
    let out = head.forward(&feats, false).unwrap();
    assert_close("rust logits", &out.fused, get(&f, "logits"));
    assert_close("rust pam_logits", &out.pam, get(&f, "pam_logits"));
    assert_close("rust cam_logits", &out.cam, get(&f, "cam_logits"));
    let aux_logits = aux.forward(&feats, false).unwrap();
    assert_close("rust aux_logits", &aux_logits, get(&f, "aux_logits"));
}

/// Swin-T's four normalised outputs (mmseg `norm0`..`norm3`) at 1x3x61x45, every element.
fn check_backbone(cfg: &SwinConfig, dtype: DType, train: bool) {
    let f = fixture("swin_danet_backbone_1x3x61x45");
    let dev = Device::Cpu;
    let net = Swin::new(cfg, synthetic_var_builder(dtype, &dev).pp("backbone")).unwrap();
    assert_eq!(
        net.feature_names(),
        ["stage1", "stage2", "stage3", "stage4"]
    );
    let x = synthetic_input("input", (1, 3, 61, 45), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let out = net.forward(&x, train).unwrap();
    let want: BTreeMap<usize, &Tensor> = (1..=4)
        .map(|k| (k, get(&f, &format!("stage{k}"))))
        .collect();
    for (k, t) in (1..=4).zip(&out.feature_maps) {
        let what = format!("backbone {dtype:?} train={train} stage{k}");
        assert_close(&what, &t.to_dtype(DType::F32).unwrap(), want[&k]);
    }
}

#[test]
fn swin_mmseg_backbone_1x3x61x45() {
    check_backbone(&SwinConfig::mmseg_tiny(), DType::F32, false);
}

#[test]
fn swin_mmseg_backbone_composed_ops_f64() {
    check_backbone(&SwinConfig::mmseg_tiny(), DType::F64, false);
}

/// Training mode without stochastic effects takes the differentiable path (mmcv `FFN`'s
/// extra dropout and drop path are identities at rate 0) and gives the same numbers.
#[test]
fn swin_mmseg_backbone_train_mode_without_drop_path() {
    let cfg = SwinConfig {
        drop_path_rate: 0.0,
        ..SwinConfig::mmseg_tiny()
    };
    check_backbone(&cfg, DType::F32, true);
}
