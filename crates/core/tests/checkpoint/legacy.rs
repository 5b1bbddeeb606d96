//! PyTorch's legacy (non-zip) serialization, as PyTorch 0.4 / 1.0 wrote PANet's and Gated-SCNN's
//! checkpoints, read with torch's values; and the byte orders and pickle protocols around it.

use candle_core::{DType, Tensor};
use segkit_core::checkpoint::{CheckpointFormat, LoadOptions, StateDict};
use segkit_core::Error;

use super::bad_files::expect_bad;
use super::{assert_matches, expected, fixture, tmp, R};

#[test]
fn legacy_files_load_torch_values() -> R {
    for (f, case) in [
        ("legacy.pth", "tiny"), // torch.save(sd, _use_new_zipfile_serialization=False)
        ("legacy_protocol5.pth", "tiny"), // .. and pickle_protocol=5
        ("legacy_views.pth", "views"), // offsets, strides, stride 0, shared storage, dtypes
        ("legacy_storage_views.pth", "storage_views"), // view_metadata (storage slices)
        ("legacy_big_endian_machine.pth", "panet_floats"), // 0.4 on a big-endian machine
    ] {
        assert_eq!(
            CheckpointFormat::detect(fixture(f))?,
            CheckpointFormat::PyTorchLegacy,
            "{f}"
        );
        assert_matches(&StateDict::load(fixture(f))?, &expected(case), f);
    }
    Ok(())
}

#[test]
fn other_byte_orders_and_protocols() -> R {
    // A zip file with byteorder `big` (storages byte-swapped), and protocol 5: torch's values.
    for f in ["big_endian.pth", "protocol5.pth"] {
        assert_matches(&StateDict::load(fixture(f))?, &expected("tiny"), f);
    }
    Ok(())
}

#[test]
fn panet_checkpoint_model_is_found_or_named() -> R {
    // {step, train_size, batch_size, model, optimizer (momentum buffers: storages of their own)}
    let want = expected("panet");
    assert!(want.contains_key("Conv_Body.posthoc_modules.1.1.weight"));
    let auto = StateDict::load(fixture("legacy_panet.pth"))?;
    assert_matches(&auto, &want, "found");
    let opts = LoadOptions {
        key: Some("model"),
        ..Default::default()
    };
    assert_matches(
        &StateDict::load_with(fixture("legacy_panet.pth"), &opts)?,
        &want,
        "key model",
    );
    // The optimizer is training state: named explicitly, it is not a state dict of tensors.
    let opts = LoadOptions {
        key: Some("optimizer"),
        ..Default::default()
    };
    match StateDict::load_with(fixture("legacy_panet.pth"), &opts) {
        Err(Error::BadCheckpoint { reason, .. }) => {
            assert!(reason.contains("holds no tensors"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn gscnn_checkpoint_module_prefix() -> R {
    // {state_dict (DataParallel: module.*), optimizer, epoch, mean_iu (a numpy float64)}
    let want = expected("gscnn");
    assert!(want.contains_key("gate1._gate_conv.4.running_var"));
    let opts = LoadOptions {
        key: Some("state_dict"),
        ..Default::default()
    };
    for sd in [
        StateDict::load(fixture("legacy_gscnn.pth"))?,
        StateDict::load_with(fixture("legacy_gscnn.pth"), &opts)?,
    ] {
        assert_matches(&sd, &want, "gscnn");
        assert_eq!(
            sd.get("gate1._gate_conv.0.num_batches_tracked")
                .map(Tensor::dtype),
            Some(DType::I64)
        );
    }
    let raw = StateDict::load_with(
        fixture("legacy_gscnn.pth"),
        &LoadOptions {
            keep_module_prefix: true,
            ..Default::default()
        },
    )?;
    assert!(raw.keys().all(|k| k.starts_with("module.")));
    assert_eq!(raw.len(), want.len());
    Ok(())
}

#[test]
fn legacy_whole_module_and_truncations() -> R {
    expect_bad(
        &fixture("legacy_module.pth"),
        &["pickled module", "state_dict()"],
    );
    // Every cut of a legacy file is a BadCheckpoint naming the file, never a panic.
    let bytes = std::fs::read(fixture("legacy_panet.pth"))?;
    let d = tmp();
    let p = d.path().join("cut.pth");
    for n in (14..bytes.len()).step_by(53).chain([bytes.len() - 1]) {
        std::fs::write(&p, &bytes[..n])?;
        match StateDict::load(&p) {
            Err(Error::BadCheckpoint { reason, .. }) => assert!(
                reason.contains("truncated") || reason.contains("corrupt"),
                "cut at {n}: {reason}"
            ),
            other => panic!("cut at {n}: {other:?}"),
        }
    }
    Ok(())
}
