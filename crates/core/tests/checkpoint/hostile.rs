//! Hostile checkpoints, one test per crash class of issue 14 (item 1): each must be a typed
//! `Error::BadCheckpoint`, never a stack overflow, a panic, an abort or an unbounded
//! allocation. The inputs are built here, byte by byte, in both containers (legacy and zip),
//! except the decompression bombs (tests/fixtures/hostile, from gen_checkpoints.py).
//!
//! The tests run on the test harness's threads (2 MiB stacks), smaller than a CLI's main
//! thread: a reader that recursed per nesting level would overflow here first.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::Error;

use super::{tmp, R};

/// Pickle building blocks (protocol 2).
mod pk {
    pub fn s(text: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend((text.len() as u32).to_le_bytes());
        v.extend(text.as_bytes());
        v
    }
    /// An int as LONG1 (8 bytes, two's complement).
    pub fn int(x: i64) -> Vec<u8> {
        let mut v = vec![0x8a, 8];
        v.extend(x.to_le_bytes());
        v
    }
    pub fn tuple(items: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![b'('];
        items.iter().for_each(|i| v.extend(i));
        v.push(b't');
        v
    }
    pub fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, {})` of an f32 storage.
    /// `legacy` adds the sixth persistent-id item (no storage view).
    pub fn tensor(
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
        legacy: bool,
    ) -> Vec<u8> {
        let mut pid = vec![
            s("storage"),
            global("torch", "FloatStorage"),
            s(key),
            s("cpu"),
            int(numel),
        ];
        if legacy {
            pid.push(b"N".to_vec());
        }
        let mut v = global("torch._utils", "_rebuild_tensor_v2");
        let mut args = tuple(&pid);
        args.push(b'Q');
        let ints = |xs: &[i64]| tuple(&xs.iter().map(|&x| int(x)).collect::<Vec<_>>());
        v.extend(tuple(&[
            args,
            int(offset),
            ints(size),
            ints(stride),
            vec![0x89],
            b"}".to_vec(),
        ]));
        v.push(b'R');
        v
    }
    /// `{k: v, ..}` as a whole pickle.
    pub fn dict(items: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut v = b"\x80\x02}(".to_vec();
        for (k, x) in items {
            v.extend(s(k));
            v.extend(x);
        }
        v.extend(b"u.");
        v
    }
}

/// A legacy checkpoint: magic, protocol, sys info, `object`, the storage keys, and each
/// storage as (element count, bytes).
fn legacy(object: &[u8], storages: &[(&str, u64, &[u8])]) -> Vec<u8> {
    let mut f = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    f.extend(b"\x80\x02M\xe9\x03.\x80\x02}.");
    f.extend(object);
    f.extend(b"\x80\x02(");
    storages.iter().for_each(|(k, _, _)| f.extend(pk::s(k)));
    f.extend(b"l.");
    for (_, n, data) in storages {
        f.extend(n.to_le_bytes());
        f.extend(*data);
    }
    f
}

/// A zip checkpoint (stored entries): `archive/data.pkl` and `archive/data/<key>`.
fn zip(object: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).expect("zip");
    z.write_all(object).expect("zip");
    for (k, data) in storages {
        z.start_file(format!("archive/data/{k}"), opts)
            .expect("zip");
        z.write_all(data).expect("zip");
    }
    z.finish().expect("zip").into_inner()
}

/// Writes `bytes`, loads them, and expects a BadCheckpoint that says each of `says`.
fn refused(dir: &Path, name: &str, bytes: &[u8], says: &[&str]) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    match StateDict::load(&p) {
        Err(Error::BadCheckpoint { path, reason }) => {
            assert_eq!(path, p);
            for s in says {
                assert!(reason.contains(s), "{name}: should say `{s}`: {reason}");
            }
        }
        Err(e) => panic!("{name}: expected BadCheckpoint, got {e:?}"),
        Ok(sd) => panic!("{name}: loaded {} tensors", sd.len()),
    }
}

/// The same object pickle in both containers, refused for the same reason.
fn refused_both(dir: &Path, name: &str, object: &[u8], says: &[&str]) {
    refused(
        dir,
        &format!("{name}.legacy.pth"),
        &legacy(object, &[]),
        says,
    );
    refused(dir, &format!("{name}.zip.pth"), &zip(object, &[]), says);
}

const DEPTH: usize = 100_000;

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let d = tmp();
    // Lists: MARK x N, EMPTY_LIST, LIST x N  ->  [[[...]]]
    let mut lists = b"\x80\x02".to_vec();
    lists.extend(std::iter::repeat_n(b'(', DEPTH));
    lists.push(b']');
    lists.extend(std::iter::repeat_n(b'l', DEPTH));
    lists.push(b'.');
    refused_both(d.path(), "lists", &lists, &["list, not a state dict"]);
    // Dicts: {"a": {"a": ... {}}}
    let mut dicts = b"\x80\x02".to_vec();
    for _ in 0..DEPTH {
        dicts.push(b'(');
        dicts.extend(pk::s("a"));
    }
    dicts.push(b'}');
    dicts.extend(std::iter::repeat_n(b'd', DEPTH));
    dicts.push(b'.');
    refused_both(d.path(), "dicts", &dicts, &["no tensors"]);
    // Tuples and a chain of _rebuild_from_type_v2 whose args nest N deep, and of
    // _rebuild_parameter objects, in a state dict.
    let from_type = pk::global("torch._tensor", "_rebuild_from_type_v2");
    let mut chain = from_type.clone();
    chain.extend(b"q\x01");
    for _ in 0..DEPTH {
        chain.extend(b"(h\x01N");
    }
    chain.extend(b")");
    for _ in 0..DEPTH {
        chain.extend(b"}t");
    }
    chain.push(b'R');
    let mut sd = b"\x80\x02}(".to_vec();
    sd.extend(pk::s("w"));
    sd.extend(&chain);
    sd.extend(b"u.");
    refused_both(
        d.path(),
        "from_type",
        &sd,
        &["tensor `w`", "wrapped in more than 8"],
    );
    let mut params = pk::global("torch._utils", "_rebuild_parameter");
    params.extend(b"q\x020");
    for _ in 0..DEPTH {
        params.extend(b"h\x02(");
    }
    params.extend(pk::tensor("0", 1, 0, &[1], &[1], false));
    for _ in 0..DEPTH {
        params.extend(b"\x88}tR");
    }
    let mut sd = b"\x80\x02}(".to_vec();
    sd.extend(pk::s("w"));
    sd.extend(&params);
    sd.extend(b"u.");
    refused(
        d.path(),
        "params.zip.pth",
        &zip(&sd, &[("0", &[0; 4])]),
        &["wrapped in more than 8"],
    );
}

/// A tensor view of a storage of 4 f32 elements: (name, size, stride, offset, what the
/// error says).
type View = (
    &'static str,
    &'static [i64],
    &'static [i64],
    i64,
    &'static str,
);

const BAD_VIEWS: &[View] = &[
    // Stride 0 with a huge size: inside the storage, but 4 TB to copy.
    (
        "stride0",
        &[1 << 40],
        &[0],
        0,
        "beyond this checkpoint's bound",
    ),
    (
        "stride0_2d",
        &[1 << 20, 1 << 20],
        &[0, 0],
        0,
        "beyond this checkpoint's bound",
    ),
    // numel * 4 wraps to 0 in 64 bits.
    ("wraps", &[1 << 62], &[0], 0, "overflows the byte count"),
    (
        "numel",
        &[1 << 32, 1 << 32],
        &[0, 0],
        0,
        "overflows the element count",
    ),
    ("extent", &[4], &[i64::MAX], 0, "strides overflow"),
    ("past_end", &[5], &[1], 0, "outside its storage"),
    ("offset", &[2], &[1], 3, "outside its storage"),
    ("negative", &[2], &[-1], 0, "not a size"),
];

#[test]
fn tensor_views_are_checked_before_allocating() {
    let d = tmp();
    let data = [0u8; 16];
    for &(name, size, stride, offset, says) in BAD_VIEWS {
        let item = |legacy| {
            vec![(
                "w".to_string(),
                pk::tensor("0", 4, offset, size, stride, legacy),
            )]
        };
        let l = legacy(&pk::dict(&item(true)), &[("0", 4, &data)]);
        refused(
            d.path(),
            &format!("{name}.legacy.pth"),
            &l,
            &["tensor `w`", says],
        );
        let z = zip(&pk::dict(&item(false)), &[("0", &data)]);
        refused(
            d.path(),
            &format!("{name}.zip.pth"),
            &z,
            &["tensor `w`", says],
        );
    }
    // A small stride-0 view (an expanded tensor) is fine.
    let item = vec![(
        "w".to_string(),
        pk::tensor("0", 4, 0, &[3, 4], &[0, 1], false),
    )];
    let p = d.path().join("expanded.pth");
    std::fs::write(&p, zip(&pk::dict(&item), &[("0", &data)])).expect("write");
    assert_eq!(
        StateDict::load(&p)
            .expect("expanded")
            .get("w")
            .map(|t| t.dims().to_vec()),
        Some(vec![3, 4])
    );
}

#[test]
fn storage_sizes_are_checked_against_the_file() {
    let d = tmp();
    let huge = 1i64 << 40;
    let item = |legacy| {
        vec![(
            "w".to_string(),
            pk::tensor("0", huge, 0, &[1], &[1], legacy),
        )]
    };
    // Legacy: the count agrees with the pickle, but the file has 16 bytes, not 4 TB.
    let l = legacy(&pk::dict(&item(true)), &[("0", huge as u64, &[0; 16])]);
    refused(
        d.path(),
        "huge.legacy.pth",
        &l,
        &["bytes are left in the file"],
    );
    // Zip: the entry's declared size is not the pickle's.
    let z = zip(&pk::dict(&item(false)), &[("0", &[0; 16])]);
    refused(d.path(), "huge.zip.pth", &z, &["the pickle declares"]);
    // Legacy: the count disagrees with the pickle.
    let small = vec![("w".to_string(), pk::tensor("0", 4, 0, &[1], &[1], true))];
    let l = legacy(&pk::dict(&small), &[("0", 5, &[0; 20])]);
    refused(
        d.path(),
        "count.legacy.pth",
        &l,
        &["the file says 5 elements, the pickle 4"],
    );
}

#[test]
fn overlapping_views_are_bounded() {
    // 20 000 distinct views of one 128 KiB storage: 1 GB to copy from a 3 MB file.
    // (Identical views are tied weights: one tensor, copied once.)
    let d = tmp();
    let n = 32 << 10;
    let items: Vec<(String, Vec<u8>)> = (0..20_000)
        .map(|i| {
            (
                format!("w{i}"),
                pk::tensor("0", n, i, &[n - 20_000], &[1], false),
            )
        })
        .collect();
    let data = vec![0u8; 4 * n as usize];
    let z = zip(&pk::dict(&items), &[("0", &data)]);
    refused(
        d.path(),
        "overlap.zip.pth",
        &z,
        &["beyond this checkpoint's bound"],
    );
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hostile")
        .join(name)
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const CHILD_ENV: &str = "SEGKIT_HOSTILE_CHILD";

/// Run by [`decompression_bombs_stay_small`] in a process of its own (so that no other test
/// shares its peak memory): loads the file named by the environment and prints the peak
/// resident memory before and after. Without the variable (a normal test run) it does nothing.
#[test]
fn bomb_child() {
    let Ok(p) = std::env::var(CHILD_ENV) else {
        return;
    };
    // Read a real checkpoint first, so that the reader's own code pages are resident before.
    let plain = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/checkpoints");
    StateDict::load(plain.join("plain.pth")).expect("plain.pth");
    let before = peak_rss();
    let r = StateDict::load(&p);
    let after = peak_rss();
    match r {
        Err(Error::BadCheckpoint { reason, .. }) => println!("BOMB {before} {after} {reason}"),
        other => panic!("{p}: {other:?}"),
    }
}

#[test]
fn decompression_bombs_stay_small() -> R {
    // Each file is ~520 KB of deflate holding 512 MiB of zeros (the issue's was 3 MB -> 3 GiB,
    // 8.6 GB peak): refused from the declared sizes, or when the entry passes its declared
    // size (the zip reader checks it; segkit never reads past it either).
    for (f, says) in [
        ("bomb_declared.pth", "beyond this checkpoint's bound"),
        ("bomb_lying.pth", "declared uncompressed size"),
    ] {
        let p = fixture(f);
        let len = std::fs::metadata(&p)?.len();
        let out = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "hostile::bomb_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &p)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.split_once("BOMB ").map(|x| x.1))
            .ok_or_else(|| {
                format!(
                    "{f}: child printed no result: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let mut it = line.splitn(3, ' ');
        let before: u64 = it.next().unwrap_or("").parse()?;
        let after: u64 = it.next().unwrap_or("").parse()?;
        let reason = it.next().unwrap_or("");
        assert!(reason.contains(says), "{f}: {reason}");
        let grew = after.saturating_sub(before);
        println!("{f}: {len} bytes, peak RSS grew by {grew} bytes ({before} -> {after})");
        assert!(
            grew <= 2 * len,
            "{f}: peak memory grew by {grew} bytes for a {len}-byte file"
        );
    }
    Ok(())
}

#[test]
fn safetensors_headers_are_checked() {
    let d = tmp();
    let file = |header: &str, data: &[u8]| {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend(header.as_bytes());
        f.extend(data);
        f
    };
    for (name, header, data, says) in [
        (
            "empty_but_huge",
            r#"{"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}"#,
            &[][..],
            "strides overflow",
        ),
        (
            "numel_overflow",
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
            &[0u8; 16][..],
            "corrupt",
        ),
        (
            "offsets_past_end",
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1099511627776]}}"#,
            &[0u8; 16][..],
            "corrupt",
        ),
    ] {
        refused(
            d.path(),
            &format!("{name}.safetensors"),
            &file(header, data),
            &[says],
        );
    }
    // A header length beyond the file.
    let mut f = (1u64 << 60).to_le_bytes().to_vec();
    f.extend(b"{}");
    refused(d.path(), "length.safetensors", &f, &["truncated"]);
}

#[test]
fn integer_tensors_are_not_float_weights() -> R {
    // A safetensors file whose F32 header says I32: the bytes of 1.0 read as 1065353216.
    let d = tmp();
    let p = d.path().join("flipped.safetensors");
    let w = Tensor::new(&[[1.0f32, -0.5], [0.25, 2.0]], &Device::Cpu)?;
    checkpoint::save_safetensors([("fc.weight", &w)], &p)?;
    let mut bytes = std::fs::read(&p)?;
    let at = bytes
        .windows(5)
        .position(|w| w == b"\"F32\"")
        .ok_or("F32")?;
    bytes[at + 1] = b'I';
    std::fs::write(&p, &bytes)?;
    let sd = StateDict::load(&p)?;
    assert_eq!(sd.get("fc.weight").map(Tensor::dtype), Some(DType::I32));
    let err = checkpoint::load_model(&sd, DType::F32, &Device::Cpu, |vb| {
        Ok::<_, Error>(candle_nn::linear_no_bias(2, 2, vb.pp("fc"))?)
    })
    .expect_err("garbage weights");
    match err {
        Error::BadCheckpoint { path, reason } => {
            assert_eq!(path, p);
            assert!(
                reason.contains("fc.weight") && reason.contains("I32"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Small integers (index buffers, masks) are converted by value.
    let mut sd = StateDict::new();
    sd.insert("idx", Tensor::new(&[0u32, 3, 48], &Device::Cpu)?);
    let (t, _) = checkpoint::load_model_lenient(&sd, DType::F32, &Device::Cpu, |vb| {
        Ok::<_, Error>(vb.get(3, "idx")?)
    })?;
    assert_eq!(t.to_vec1::<f32>()?, [0.0, 3.0, 48.0]);
    Ok(())
}
