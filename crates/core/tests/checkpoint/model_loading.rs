//! `load_model` and friends: building a model from a state dict, with typed errors for
//! missing keys, shape mismatches and unused keys.

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use segkit_core::checkpoint::{load_model, load_model_lenient, StateDict, WeightTracker};
use segkit_core::Error;

use super::{fixture, R};

/// The tiny torch model of gen_checkpoints.py (Conv2d + BatchNorm2d + Linear), with candle-nn.
struct Tiny {
    conv: candle_nn::Conv2d,
    bn: candle_nn::BatchNorm,
    fc: candle_nn::Linear,
}

impl Tiny {
    fn new(vb: VarBuilder<'_>, conv_out: usize) -> candle_core::Result<Self> {
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv: candle_nn::conv2d(3, conv_out, 3, cfg, vb.pp("conv"))?,
            bn: candle_nn::batch_norm(4, 1e-5, vb.pp("bn"))?,
            fc: candle_nn::linear(4, 2, vb.pp("fc"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.bn.forward_t(&self.conv.forward(x)?, false)?.relu()?;
        self.fc.forward(&x.mean((2, 3))?)
    }
}

#[test]
fn load_model_builds_and_runs() -> R {
    let dev = Device::Cpu;
    let sd = StateDict::load(fixture("plain.pth"))?;
    // Strict: bn.num_batches_tracked is the only unused key, and it is ignored.
    let m = load_model(&sd, DType::F32, &dev, |vb| {
        Ok::<_, Error>(Tiny::new(vb, 4)?)
    })?;
    let x = Tensor::ones((1, 3, 5, 5), DType::F32, &dev)?;
    assert_eq!(m.forward(&x)?.dims(), [1, 2]);

    // fp16 weights for an f32 model are converted; same-dtype tensors are handed out as is.
    let half = StateDict::load(fixture("fp16.pth"))?;
    let m = load_model(&half, DType::F32, &dev, |vb| {
        Ok::<_, Error>(Tiny::new(vb, 4)?)
    })?;
    assert_eq!(m.forward(&x)?.dtype(), DType::F32);
    let tracker = WeightTracker::new(&sd);
    let w = tracker
        .var_builder(DType::F32, &dev)
        .get((4, 3, 3, 3), "conv.weight")?;
    assert_eq!(
        w.id(),
        sd.get("conv.weight").ok_or("conv.weight")?.id(),
        "no copy"
    );
    assert_eq!(tracker.used_keys(), ["conv.weight"]);
    Ok(())
}

#[test]
fn missing_key_is_reported_by_name_with_hints() -> R {
    let sd = StateDict::load(fixture("plain.pth"))?;
    // The model expects mmseg names; the checkpoint is torchvision-style.
    let err = load_model(&sd, DType::F32, &Device::Cpu, |vb| {
        Ok::<_, Error>(Tiny::new(vb.pp("backbone"), 4)?)
    })
    .err()
    .ok_or("should fail")?;
    match &err {
        Error::MissingWeight { key, available } => {
            assert_eq!(key, "backbone.conv.weight");
            assert_eq!(available.first().map(String::as_str), Some("conv.weight"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("backbone.conv.weight"));
    Ok(())
}

#[test]
fn shape_mismatch_reports_both_shapes() -> R {
    let sd = StateDict::load(fixture("plain.pth"))?;
    let err = load_model(&sd, DType::F32, &Device::Cpu, |vb| {
        Ok::<_, Error>(Tiny::new(vb, 5)?)
    })
    .err()
    .ok_or("should fail")?;
    match &err {
        Error::ShapeMismatch {
            what,
            expected,
            got,
        } => {
            assert_eq!(what, "conv.weight");
            assert_eq!(expected, &[5, 3, 3, 3]);
            assert_eq!(got, &[4, 3, 3, 3]);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("[5, 3, 3, 3]") && msg.contains("[4, 3, 3, 3]"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn unexpected_keys_are_reported_by_name() -> R {
    let sd = StateDict::load(fixture("plain.pth"))?;
    let dev = Device::Cpu;
    let conv_only = |vb: VarBuilder<'static>| {
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok::<_, Error>(candle_nn::conv2d(3, 4, 3, cfg, vb.pp("conv"))?)
    };
    match load_model(&sd, DType::F32, &dev, conv_only) {
        Err(e @ Error::UnexpectedWeights { .. }) => {
            let Error::UnexpectedWeights { keys } = &e else {
                unreachable!()
            };
            assert_eq!(
                keys,
                &[
                    "bn.bias",
                    "bn.running_mean",
                    "bn.running_var",
                    "bn.weight",
                    "fc.bias",
                    "fc.weight"
                ]
            );
            assert!(e
                .to_string()
                .starts_with("6 unexpected weight(s) in checkpoint, e.g. bn.bias"));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let (_, unused) = load_model_lenient(&sd, DType::F32, &dev, conv_only)?;
    assert_eq!(unused.len(), 6);
    assert!(!unused.iter().any(|k| k.contains("num_batches_tracked")));
    Ok(())
}

/// A component crate's error, wrapping segkit-core's as the conventions require.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error(transparent)]
    Core(#[from] Error),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

#[test]
fn typed_errors_reach_component_error_types() -> R {
    let sd = StateDict::load(fixture("plain.pth"))?;
    let dev = Device::Cpu;
    // The component's `?` turns candle's error into HeadError::Candle; load_model gives back
    // the typed one.
    let r = load_model(&sd, DType::F32, &dev, |vb| -> Result<_, HeadError> {
        Ok(candle_nn::linear(4, 2, vb.pp("head"))?)
    });
    assert!(
        matches!(r, Err(HeadError::Core(Error::MissingWeight { ref key, .. })) if key == "head.weight")
    );

    // A lookup the model recovered from (an optional weight) is not blamed for a later error.
    let r = load_model(&sd, DType::F32, &dev, |vb| -> Result<_, HeadError> {
        let _optional = vb.get(4, "fc.extra_scale").ok();
        Ok(candle_nn::linear(3, 2, vb.pp("fc"))?)
    });
    match r {
        Err(HeadError::Core(Error::ShapeMismatch { what, .. })) => assert_eq!(what, "fc.weight"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // An error that is not a lookup failure is passed through.
    let r = load_model(&sd, DType::F32, &dev, |_vb| -> Result<(), HeadError> {
        Err(Error::InvalidConfig("bad".into()).into())
    });
    assert!(matches!(r, Err(HeadError::Core(Error::InvalidConfig(_)))));
    Ok(())
}
