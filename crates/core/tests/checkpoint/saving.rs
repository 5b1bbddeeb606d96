//! Writing safetensors: round trips, interoperability, and atomic replacement.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::Error;

use super::{assert_matches, expected, fixture, tmp, values, R};

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
