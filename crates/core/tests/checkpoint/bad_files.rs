//! Files that are not readable checkpoints: each is an `Error::BadCheckpoint` naming the file
//! and saying what is wrong.

use std::path::{Path, PathBuf};

use segkit_core::checkpoint::StateDict;
use segkit_core::Error;

use super::{expected, fixture, tmp, R};

/// Loads `path`, expecting a `BadCheckpoint` whose message names the file and says `says`.
pub(crate) fn expect_bad(path: &Path, says: &[&str]) {
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
