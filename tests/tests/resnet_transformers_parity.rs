//! segkit-backbones' ResNet with `KeyStyle::Hf` against transformers'
//! `ResNetBackbone` (fixtures: tests/parity/gen_resnet_transformers.py):
//!
//! - ResNet-18 and ResNet-50 ask for exactly HF's state-dict keys, with HF's shapes;
//! - ResNet-18 with synthetic weights (keyed by HF's names) on a 1x3x61x75 input gives HF's
//!   four feature maps, every element compared.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::testing::synthetic_var_builder;
use segkit_tests::{assert_close, fixture_path, get, load_fixture};

/// A `VarBuilder` backend that records every (key, shape) asked for and answers with zeros.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let prev = self
            .0
            .lock()
            .unwrap()
            .insert(name.to_string(), s.dims().to_vec());
        assert!(prev.is_none(), "`{name}` asked for twice");
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("`{name}` without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[test]
fn keys_and_shapes_are_transformers() {
    let text = std::fs::read_to_string(fixture_path("resnet_transformers/keys.json")).unwrap();
    let want: BTreeMap<String, BTreeMap<String, Vec<usize>>> = serde_json::from_str(&text).unwrap();
    for (name, depth) in [("resnet18", 18), ("resnet50", 50)] {
        let rec = Recorder::default();
        let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
        ResNet::new(&ResNetConfig::hf(depth), vb).unwrap();
        let got = rec.0.lock().unwrap().clone();
        let want = &want[name];
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: HF keys segkit does not load {missing:?}; segkit keys HF lacks {extra:?}"
        );
        for (k, shape) in want {
            assert_eq!(&got[k], shape, "{name}: shape of `{k}`");
        }
        eprintln!("{name}: {} keys and shapes equal", got.len());
    }
}

#[test]
fn resnet18_feature_maps() {
    let dev = Device::Cpu;
    let f = load_fixture("resnet_transformers/resnet18.safetensors");
    let net = ResNet::new(
        &ResNetConfig::hf(18),
        synthetic_var_builder(DType::F32, &dev),
    )
    .unwrap();
    let out = net.forward(get(&f, "input"), false).unwrap();
    for (n, t) in ["c2", "c3", "c4", "c5"].into_iter().zip(out.into_vec()) {
        assert_close(n, &t, get(&f, n));
    }
}
