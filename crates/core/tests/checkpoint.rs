//! `segkit_core::checkpoint` against real files written by `torch.save` and `safetensors`
//! (tests/parity/gen_checkpoints.py; reference values in expected.safetensors).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use segkit_core::checkpoint::{
    self, load_model, load_model_lenient, CheckpointFormat, LoadOptions, StateDict, WeightTracker,
};
use segkit_core::Error;

type R = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/checkpoints")
        .join(name)
}

/// The reference tensors of one case, keyed without the `<case>.` prefix.
fn expected(case: &str) -> HashMap<String, Tensor> {
    let all = candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors (run tests/parity/gen_checkpoints.py)");
    let p = format!("{case}.");
    all.into_iter()
        .filter_map(|(k, t)| k.strip_prefix(&p).map(|k| (k.to_string(), t)))
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor values")
}

/// Same keys, dtypes, shapes and exactly the same values (bool is stored and read as u8).
fn assert_matches(sd: &StateDict, want: &HashMap<String, Tensor>, what: &str) {
    let mut got: Vec<&str> = sd.keys().collect();
    let mut keys: Vec<&str> = want.keys().map(String::as_str).collect();
    got.sort();
    keys.sort();
    assert_eq!(got, keys, "{what}: keys");
    for (k, w) in want {
        let t = sd.get(k).expect("key checked above");
        assert_eq!(t.dtype(), w.dtype(), "{what}: dtype of {k}");
        assert_eq!(t.dims(), w.dims(), "{what}: shape of {k}");
        assert_eq!(values(t), values(w), "{what}: values of {k}");
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

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

// ------------------------------------------------------------------ formats

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

// ------------------------------------------------------------------ bad files

/// Loads `path`, expecting a `BadCheckpoint` whose message names the file and says `says`.
fn expect_bad(path: &Path, says: &[&str]) {
    match StateDict::load(path) {
        Err(e @ Error::BadCheckpoint { .. }) => {
            let msg = e.to_string();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            assert!(msg.contains(&name), "message should name the file: {msg}");
            for s in says {
                assert!(msg.contains(s), "message should say `{s}`: {msg}");
            }
        }
        Err(e) => panic!("{}: expected BadCheckpoint, got {e:?}", path.display()),
        Ok(sd) => panic!("{}: loaded {sd:?}", path.display()),
    }
}

#[test]
fn truncated_files_are_bad_checkpoints() -> R {
    let d = tmp();
    for (f, says) in [
        ("plain.pth", "truncated or corrupt"),
        ("mmseg.pth", "truncated or corrupt"),
        ("model.safetensors", "truncated"),
    ] {
        let bytes = std::fs::read(fixture(f))?;
        let p = d.path().join(format!("half-{}", f.replace('/', "_")));
        std::fs::write(&p, &bytes[..bytes.len() / 2])?;
        expect_bad(&p, &[says]);
    }
    // Cut inside the safetensors JSON header.
    let bytes = std::fs::read(fixture("model.safetensors"))?;
    let p = d.path().join("header.safetensors");
    std::fs::write(&p, &bytes[..40])?;
    expect_bad(&p, &["truncated", "header"]);
    // One byte short of complete.
    let p = d.path().join("short.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 1])?;
    expect_bad(&p, &["truncated"]);
    Ok(())
}

#[test]
fn corrupt_tensor_data_fails_the_crc() -> R {
    // Flip one byte of conv.weight inside the zip: the entry's CRC-32 no longer matches.
    let mut bytes = std::fs::read(fixture("plain.pth"))?;
    let w = expected("tiny")
        .remove("conv.weight")
        .ok_or("conv.weight")?;
    let first: Vec<u8> = w.flatten_all()?.to_vec1::<f32>()?[..4]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let at = bytes
        .windows(first.len())
        .position(|win| win == first.as_slice())
        .ok_or("conv.weight bytes not found in plain.pth")?;
    bytes[at] ^= 0x55;
    let d = tmp();
    let p = d.path().join("corrupt.pth");
    std::fs::write(&p, bytes)?;
    expect_bad(&p, &["data/"]);
    Ok(())
}

#[test]
fn files_that_are_not_checkpoints() -> R {
    let d = tmp();
    let w = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    expect_bad(&w("empty.pth", b""), &["empty"]);
    expect_bad(
        &w(
            "notes.pth",
            b"these are not the weights you are looking for\n",
        ),
        &["text file"],
    );
    expect_bad(&w("tiny.bin", b"abc"), &["too short"]);
    expect_bad(
        &w(
            "lfs.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n",
        ),
        &["Git LFS"],
    );
    expect_bad(
        &w("page.pth", b"<!DOCTYPE html><html><body>404</body></html>"),
        &["HTML"],
    );
    expect_bad(
        &w(
            "obj.pkl",
            b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
        ),
        &["pickle"],
    );
    // A zip archive that is not a torch checkpoint (e.g. a NumPy .npz).
    let p = d.path().join("arrays.npz");
    {
        let f = std::fs::File::create(&p)?;
        let mut z = zip::ZipWriter::new(f);
        z.start_file("x.npy", zip::write::SimpleFileOptions::default())?;
        std::io::Write::write_all(&mut z, b"\x93NUMPY")?;
        z.finish()?;
    }
    expect_bad(&p, &["without data.pkl"]);
    // A whole pickled nn.Module.
    expect_bad(
        &fixture("full_model.pth"),
        &["pickled module", "state_dict()"],
    );
    // A file that does not exist is an I/O error on that path.
    match StateDict::load(d.path().join("missing.pth")) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("missing.pth")),
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn legacy_format_is_explained() {
    expect_bad(
        &fixture("legacy.pth"),
        &["legacy serialization format", "torch.save(torch.load("],
    );
}

// ------------------------------------------------------------------ load_model

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

// ------------------------------------------------------------------ saving

#[test]
fn save_roundtrip_and_interop() -> R {
    let d = tmp();
    let sd = StateDict::load(fixture("views.pth"))?;
    let p = d.path().join("out.safetensors");
    sd.save_safetensors(&p)?;
    assert_matches(&StateDict::load(&p)?, &expected("views"), "roundtrip");
    // Readable by the safetensors crate, with HF's metadata; non-contiguous input is fine.
    let t = Tensor::arange(0f32, 6., &Device::Cpu)?
        .reshape((2, 3))?
        .t()?;
    let mut m = HashMap::new();
    m.insert("t".to_string(), t.clone());
    checkpoint::save_safetensors(&m, &p)?;
    let bytes = std::fs::read(&p)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let back = StateDict::load(&p)?;
    assert_eq!(values(back.get("t").ok_or("t")?), values(&t));
    Ok(())
}

fn dir_entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn failed_save_leaves_the_original_intact() -> R {
    let d = tmp();
    let p = d.path().join("model.safetensors");
    std::fs::copy(fixture("model.safetensors"), &p)?;
    let original = std::fs::read(&p)?;
    let sd = StateDict::load(fixture("plain.pth"))?;

    // A tensor that cannot be written (f8): refused before anything is written.
    let mut bad = sd.clone();
    bad.insert(
        "f8",
        Tensor::zeros(2, DType::F32, &Device::Cpu)?.to_dtype(DType::F8E4M3)?,
    );
    assert!(matches!(
        bad.save_safetensors(&p),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(std::fs::read(&p)?, original);

    // The target is a directory.
    let sub = d.path().join("sub.safetensors");
    std::fs::create_dir(&sub)?;
    std::fs::write(sub.join("keep"), b"x")?;
    assert!(matches!(sd.save_safetensors(&sub), Err(Error::Io { .. })));
    assert_eq!(std::fs::read(sub.join("keep"))?, b"x");
    assert_eq!(
        dir_entries(d.path()),
        ["model.safetensors", "sub.safetensors"],
        "no temp file left"
    );

    // The directory is not writable (meaningless as root, which may write anyway).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o555))?;
        let root = std::fs::write(d.path().join("probe"), b"").is_ok();
        if !root {
            match sd.save_safetensors(&p) {
                Err(Error::Io { .. }) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(std::fs::read(&p)?, original);
            assert_eq!(
                dir_entries(d.path()),
                ["model.safetensors", "sub.safetensors"]
            );
        }
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755))?;
    }

    // A successful save replaces the file.
    sd.save_safetensors(&p)?;
    assert_matches(&StateDict::load(&p)?, &expected("tiny"), "replaced");
    Ok(())
}
