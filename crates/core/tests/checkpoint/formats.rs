//! Recognising the formats by content, and reading every kind of file with torch's values.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use segkit_core::checkpoint::{self, CheckpointFormat, LoadOptions, StateDict};
use segkit_core::Error;

use super::{assert_matches, expected, fixture, tmp, R};

#[test]
fn formats_are_detected_by_content() -> R {
    let cases = [
        ("plain.pth", CheckpointFormat::PyTorchZip),
        ("hf/pytorch_model.bin", CheckpointFormat::PyTorchZip),
        ("model.safetensors", CheckpointFormat::Safetensors),
        ("legacy.pth", CheckpointFormat::PyTorchLegacy),
    ];
    for (f, want) in cases {
        assert_eq!(CheckpointFormat::detect(fixture(f))?, want, "{f}");
    }
    // The extension does not matter.
    let d = tmp();
    let p = d.path().join("weights.pth");
    std::fs::copy(fixture("model.safetensors"), &p)?;
    assert_eq!(CheckpointFormat::detect(&p)?, CheckpointFormat::Safetensors);
    assert_matches(
        &StateDict::load(&p)?,
        &expected("tiny"),
        "safetensors named .pth",
    );
    Ok(())
}

#[test]
fn safetensors_with_a_header_length_of_0x80_mod_256_is_not_taken_for_a_pickle() -> R {
    // The first byte of a safetensors file is the low byte of its header length: 0x80 here,
    // the pickle protocol opcode.
    let mut header = br#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
    header.resize(0x180, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(bytes[0], 0x80);
    bytes.extend_from_slice(&header);
    for v in [1.5f32, -2.0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let d = tmp();
    let p = d.path().join("model.safetensors");
    std::fs::write(&p, &bytes)?;
    assert_eq!(CheckpointFormat::detect(&p)?, CheckpointFormat::Safetensors);
    let sd = StateDict::load(&p)?;
    let t = sd.get("t").ok_or("tensor `t` missing")?;
    assert_eq!(t.to_vec1::<f32>()?, vec![1.5, -2.0]);
    Ok(())
}

#[test]
fn every_format_loads_torch_values() -> R {
    let tiny = expected("tiny");
    for f in [
        "plain.pth",              // torchvision: torch.save(model.state_dict())
        "wrapped_state_dict.pth", // {state_dict: ..}
        "wrapped_model.pth",      // {model: .., epoch}
        "dataparallel.pth",       // {state_dict: {module.*}, best_acc: tensor}
        "model.safetensors",      // safetensors with HF metadata
        "protocol4.pth",          // torch.save(.., pickle_protocol=4)
    ] {
        assert_matches(&StateDict::load(fixture(f))?, &tiny, f);
    }
    assert_matches(
        &StateDict::load(fixture("mmseg.pth"))?,
        &expected("segmentor"),
        "mmseg",
    );
    assert_matches(
        &StateDict::load(fixture("hf/pytorch_model.bin"))?,
        &expected("hf"),
        "hf",
    );
    let fp16 = expected("fp16");
    for f in ["fp16.pth", "fp16.safetensors"] {
        let sd = StateDict::load(fixture(f))?;
        assert_eq!(
            sd.get("conv.weight").map(Tensor::dtype),
            Some(DType::F16),
            "{f}"
        );
        assert_matches(&sd, &fp16, f);
    }
    Ok(())
}

#[test]
fn mmseg_checkpoint_with_python_objects_in_meta() -> R {
    // meta holds a dict subclass (ConfigDict), a user class, numpy arrays and scalars, a set,
    // bytes, big and negative ints; optimizer holds tensors keyed by ints.
    let seg = expected("segmentor");
    let sd = StateDict::load(fixture("mmseg.pth"))?;
    assert_matches(&sd, &seg, "auto");
    let explicit = LoadOptions {
        key: Some("state_dict"),
        ..Default::default()
    };
    assert_matches(
        &StateDict::load_with(fixture("mmseg.pth"), &explicit)?,
        &seg,
        "key",
    );

    // Backbone only, prefix stripped.
    let backbone = LoadOptions {
        prefix: Some("backbone."),
        ..Default::default()
    };
    let want: HashMap<String, Tensor> = seg
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix("backbone.")
                .map(|k| (k.to_string(), t.clone()))
        })
        .collect();
    assert_eq!(want.len(), 9);
    assert_matches(
        &StateDict::load_with(fixture("mmseg.pth"), &backbone)?,
        &want,
        "backbone.",
    );
    // A rename table (data) applied after the prefix.
    const RENAMES: &[(&str, &str)] = &[("decode_head.conv_seg.", "head.cls."), ("backbone.", "")];
    let renamed = StateDict::load_with(
        fixture("mmseg.pth"),
        &LoadOptions {
            renames: RENAMES,
            ..Default::default()
        },
    )?;
    assert!(renamed.contains("head.cls.weight") && renamed.contains("conv.weight"));
    assert_eq!(renamed.len(), seg.len());

    // Explicit keys that are not state dicts, and a prefix nothing has.
    for (key, says) in [("meta", "holds no tensors"), ("nope", "no key `nope`")] {
        let opts = LoadOptions {
            key: Some(key),
            ..Default::default()
        };
        match StateDict::load_with(fixture("mmseg.pth"), &opts) {
            Err(Error::BadCheckpoint { reason, .. }) => assert!(reason.contains(says), "{reason}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    let wrong = LoadOptions {
        prefix: Some("encoder"),
        ..Default::default()
    };
    match StateDict::load_with(fixture("mmseg.pth"), &wrong) {
        Err(Error::MissingWeight { key, available }) => {
            assert_eq!(key, "encoder.*");
            assert_eq!(available, ["backbone.*", "decode_head.*"]);
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn module_prefix_is_stripped_unless_asked() -> R {
    let sd = StateDict::load(fixture("dataparallel.pth"))?;
    assert!(sd.contains("conv.weight") && !sd.keys().any(|k| k.starts_with("module.")));
    let keep = LoadOptions {
        keep_module_prefix: true,
        ..Default::default()
    };
    let raw = StateDict::load_with(fixture("dataparallel.pth"), &keep)?;
    assert!(raw.keys().all(|k| k.starts_with("module.")));
    Ok(())
}

#[test]
fn views_strides_offsets_and_dtypes() -> R {
    // Row (offset), column (stride 6), transposed (Fortran order), block, every other element,
    // a 3-d permutation, an expanded stride-0 tensor, a scalar, an empty tensor, i64 / i32 /
    // bool / u8 / bf16 / f64, and an nn.Parameter.
    let sd = StateDict::load(fixture("views.pth"))?;
    assert_matches(&sd, &expected("views"), "views");
    assert_eq!(sd.get("mask").map(Tensor::dtype), Some(DType::U8));
    assert_eq!(sd.get("i32").map(Tensor::dtype), Some(DType::I32));
    assert_eq!(sd.get("bf16").map(Tensor::dtype), Some(DType::BF16));
    for t in sd.iter().map(|(_, t)| t) {
        assert!(t.is_contiguous());
    }
    Ok(())
}

#[test]
fn tied_weights_stay_one_tensor() -> R {
    let sd = StateDict::load(fixture("hf/pytorch_model.bin"))?;
    let (a, b) = (
        sd.get("lm_head.weight").ok_or("lm_head")?,
        sd.get("embeddings.word_embeddings.weight").ok_or("emb")?,
    );
    assert_eq!(
        a.id(),
        b.id(),
        "one storage in the file, one tensor in memory"
    );
    Ok(())
}

#[test]
fn hf_directories_and_shards() -> R {
    // save_pretrained(safe_serialization=False): the directory holds pytorch_model.bin.
    assert_matches(&StateDict::load(fixture("hf"))?, &expected("hf"), "hf dir");

    // Sharded safetensors, merged; all shards must be there.
    let sd = StateDict::load(fixture("plain.pth"))?;
    let d = tmp();
    let (a, b): (Vec<_>, Vec<_>) = sd.iter().partition(|(k, _)| k.starts_with("bn."));
    checkpoint::save_safetensors(a, d.path().join("model-00001-of-00002.safetensors"))?;
    checkpoint::save_safetensors(b, d.path().join("model-00002-of-00002.safetensors"))?;
    std::fs::write(d.path().join("config.json"), b"{}")?;
    assert_matches(&StateDict::load(d.path())?, &expected("tiny"), "shards");
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors"))?;
    match StateDict::load(d.path()) {
        Err(Error::BadCheckpoint { reason, .. }) => {
            assert!(reason.contains("incomplete"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(d.path().join("model-00001-of-00002.safetensors"))?;
    match StateDict::load(d.path()) {
        Err(Error::BadCheckpoint { reason, .. }) => {
            assert!(reason.contains("config.json"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}
