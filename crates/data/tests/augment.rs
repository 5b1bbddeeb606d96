//! segkit-data's augmentation against mmseg 1.2.2 / mmcv 2.1.0 with OpenCV 5.0 (fixtures in
//! tests/fixtures/augment/, written by tests/parity/gen_augment.py), plus properties of the
//! random parts.

use std::path::PathBuf;

use segkit_data::augment::color::{hsv_to_rgb, rgb_to_hsv, PhotoMetricParams};
use segkit_data::augment::{
    crop_passes, pad_target, random_resize_scale, resize_target, select_crop, Applied, AugImage,
    Augmented, CropBox, FlipDirection, PadVal, Pipeline, Rng, Transform,
};
use segkit_data::image::resize::{resize_bilinear, resize_nearest};
use segkit_data::{InstanceAnnotation, Sample};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/augment"
    ))
    .join(name)
}

fn meta() -> Result<Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture(
        "augment.json",
    ))?)?)
}

fn rgb(name: &str) -> Result<(usize, usize, Vec<u8>), Box<dyn std::error::Error>> {
    let img = image::open(fixture(name))?.to_rgb8();
    Ok((img.width() as usize, img.height() as usize, img.into_raw()))
}

/// An 8-bit grey fixture as a label map (16-bit values).
fn grey(name: &str) -> Result<(usize, usize, Vec<u16>), Box<dyn std::error::Error>> {
    let img = image::open(fixture(name))?;
    let image::DynamicImage::ImageLuma8(g) = img else {
        return Err(format!("{name}: not 8-bit grey").into());
    };
    let (w, h) = (g.width() as usize, g.height() as usize);
    Ok((w, h, g.into_raw().into_iter().map(u16::from).collect()))
}

/// splitmix64's finaliser of `i + golden` (as gen_augment.py's `mix`).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// gen_augment.py's checksum of a byte (or label) sequence: the same number for a label map
/// held as u8 or u16.
fn checksum<T: Copy + Into<u64>>(values: &[T]) -> String {
    let s = values.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_add(b.into().wrapping_mul(mix(i as u64) | 1))
    });
    format!("{s:016x}")
}

fn synthetic(h: usize, w: usize, c: usize) -> Vec<u8> {
    (0..(h * w * c) as u64)
        .map(|i| (mix(i + 12345) >> 56) as u8)
        .collect()
}

fn input() -> Result<Augmented, Box<dyn std::error::Error>> {
    let (w, h, image) = rgb("input.png")?;
    let (lw, lh, label) = grey("label.png")?;
    assert_eq!((w, h), (lw, lh));
    Ok(Augmented::new(Sample {
        path: fixture("input.png"),
        width: w,
        height: h,
        image,
        semantic: Some(label),
        instances: None,
    })?)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn u(v: &Value) -> usize {
    v.as_u64().unwrap_or(u64::MAX) as usize
}

fn pair(v: &Value) -> [usize; 2] {
    [u(&v[0]), u(&v[1])]
}

fn check_sums(a: &Augmented, case: &Value, what: &str) {
    assert_eq!(
        checksum(a.rgb8().expect("8-bit")),
        s(&case["img"]),
        "{what}: image"
    );
    assert_eq!(
        checksum(a.semantic.as_ref().expect("semantic")),
        s(&case["seg"]),
        "{what}: labels"
    );
}

#[test]
fn resize_matches_mmseg() -> TestResult {
    let m = meta()?;
    for case in m["resize"].as_array().ok_or("resize")? {
        let mut a = input()?;
        let (w, h) = resize_target(
            (a.width, a.height),
            pair(&case["scale"]),
            case["keep_ratio"].as_bool() == Some(true),
        );
        assert_eq!((w, h), (u(&case["width"]), u(&case["height"])), "{case}");
        a.resize(w, h)?;
        check_sums(&a, case, &format!("resize to {w}x{h}"));
        if let Some(name) = case["name"].as_str() {
            assert_eq!(a.rgb8(), Some(&rgb(&format!("{name}_img.png"))?.2[..]));
            assert_eq!(a.semantic, Some(grey(&format!("{name}_seg.png"))?.2));
        }
    }
    let rr = &m["random_resize"];
    for case in rr["cases"].as_array().ok_or("random_resize")? {
        let scale = random_resize_scale(
            pair(&rr["scale"]),
            [
                rr["ratio_range"][0].as_f64().unwrap_or(0.0),
                rr["ratio_range"][1].as_f64().unwrap_or(0.0),
            ],
            case["u"].as_f64().unwrap_or(-1.0),
        );
        assert_eq!(scale, pair(&case["scale"]), "{case}");
        let mut a = input()?;
        let (w, h) = resize_target((a.width, a.height), scale, true);
        assert_eq!((w, h), (u(&case["width"]), u(&case["height"])));
        a.resize(w, h)?;
        check_sums(&a, case, "RandomResize");
    }
    Ok(())
}

#[test]
fn resize_kernels_match_opencv_on_a_sweep() -> TestResult {
    let m = meta()?;
    let cases = m["resize_sweep"].as_array().ok_or("sweep")?;
    let mut bad = Vec::new();
    for case in cases {
        let [sw, sh] = pair(&case["src"]);
        let [dw, dh] = pair(&case["dst"]);
        let c = u(&case["channels"]);
        let src = synthetic(sh, sw, c);
        let lin = resize_bilinear(&src, sw, sh, c, dw, dh)?;
        let nn = resize_nearest(&src, sw, sh, c, dw, dh)?;
        if checksum(&lin) != s(&case["bilinear"]) {
            bad.push(format!("bilinear {sw}x{sh}x{c} -> {dw}x{dh}"));
        }
        if checksum(&nn) != s(&case["nearest"]) {
            bad.push(format!("nearest {sw}x{sh}x{c} -> {dw}x{dh}"));
        }
    }
    assert!(cases.len() >= 190);
    assert!(
        bad.is_empty(),
        "{} of {} differ: {bad:?}",
        bad.len(),
        2 * cases.len()
    );
    Ok(())
}

#[test]
fn crop_matches_mmseg_with_scripted_offsets() -> TestResult {
    let m = meta()?;
    let crop = &m["crop"];
    for case in crop["cases"].as_array().ok_or("crop")? {
        let name = s(&case["name"]);
        let mut a = input()?;
        if name == "exhausted" {
            a.semantic = Some(grey("label_mostly_2.png")?.2);
        }
        let (crop_size, ratio) = if name == "oversize" {
            (pair(&case["crop_size"]), 1.0)
        } else {
            (
                pair(&crop["crop_size"]),
                crop["cat_max_ratio"].as_f64().unwrap_or(0.0),
            )
        };
        let mut offsets: Vec<[usize; 2]> = case["offsets"]
            .as_array()
            .ok_or("offsets")?
            .iter()
            .map(pair)
            .collect();
        offsets.reverse();
        let b = select_crop(
            a.width,
            a.height,
            a.semantic.as_deref(),
            crop_size,
            ratio,
            255,
            &mut |_, _| {
                let [oy, ox] = offsets.pop().expect("scripted offsets ran out");
                (oy, ox)
            },
        );
        assert!(
            offsets.is_empty(),
            "{name}: {} offsets unused",
            offsets.len()
        );
        a.crop(b)?;
        assert_eq!((a.width, a.height), (u(&case["width"]), u(&case["height"])));
        if name == "oversize" {
            check_sums(&a, case, name);
        } else {
            assert_eq!(
                a.rgb8(),
                Some(&rgb(&format!("crop_{name}_img.png"))?.2[..]),
                "{name}"
            );
            assert_eq!(
                a.semantic,
                Some(grey(&format!("crop_{name}_seg.png"))?.2),
                "{name}"
            );
        }
    }
    Ok(())
}

#[test]
fn flip_pad_normalize_match_mmseg() -> TestResult {
    let m = meta()?;
    for case in m["flip"].as_array().ok_or("flip")? {
        let mut a = input()?;
        a.flip(match s(&case["direction"]) {
            "horizontal" => FlipDirection::Horizontal,
            _ => FlipDirection::Vertical,
        })?;
        check_sums(&a, case, "flip");
    }
    for case in m["pad"].as_array().ok_or("pad")? {
        let mut a = input()?;
        let args = &case["args"];
        let size = args.get("size").map(pair);
        let div = args.get("size_divisor").map(u);
        let square = args.get("pad_to_square").and_then(Value::as_bool) == Some(true);
        let (w, h) = pad_target((a.width, a.height), size, div, square);
        a.pad(w, h, &PadVal::default())?;
        assert_eq!((a.width, a.height), (u(&case["width"]), u(&case["height"])));
        check_sums(&a, case, &format!("pad {args}"));
    }
    let n = &m["normalize"];
    let mut a = input()?;
    let f3 = |v: &Value| -> [f64; 3] { [0, 1, 2].map(|i| v[i].as_f64().unwrap_or(f64::NAN)) };
    a.normalize(f3(&n["mean"]), f3(&n["std"]), true)?;
    let [pw, ph] = pair(&n["pad"]);
    a.pad(pw, ph, &PadVal { img: 0.0, seg: 255 })?;
    let chw = a.image_chw();
    assert_eq!(&chw[..1], &[n["first"][0].as_f64().unwrap_or(0.0) as f32]);
    let bytes: Vec<u8> = chw.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(checksum(&bytes), s(&n["chw"]), "normalised image");
    assert_eq!(checksum(a.semantic.as_ref().ok_or("seg")?), s(&n["seg"]));
    Ok(())
}

#[test]
fn photometric_matches_mmseg_with_scripted_draws() -> TestResult {
    let m = meta()?;
    for case in m["photometric"].as_array().ok_or("photometric")? {
        let p: PhotoMetricParams = serde_json::from_value(case["params"].clone())?;
        let (w, h) = (u(&case["width"]), u(&case["height"]));
        let mut a = input()?;
        if (w, h) != (a.width, a.height) {
            a.crop(CropBox {
                y1: 0,
                y2: h,
                x1: 0,
                x2: w,
            })?;
        }
        a.photometric(&p)?;
        let (_, _, want) = rgb(s(&case["file"]))?;
        let got = a.rgb8().ok_or("8-bit")?;
        let diff = got.iter().zip(&want).filter(|(x, y)| x != y).count();
        assert_eq!(
            diff,
            0,
            "{}: {diff} of {} bytes differ",
            case["name"],
            want.len()
        );
    }
    Ok(())
}

#[test]
fn hsv_conversions_match_opencv_exhaustively() -> TestResult {
    let m = meta()?;
    let hsv_meta = &m["hsv"];
    // Pixel i of the BGR image is (b, g, r) = (i >> 16, i >> 8, i) & 255.
    let rgb_all: Vec<u8> = (0u32..1 << 24)
        .flat_map(|i| [(i & 255) as u8, ((i >> 8) & 255) as u8, (i >> 16) as u8])
        .collect();
    assert_eq!(checksum(&rgb_to_hsv(&rgb_all)), s(&hsv_meta["bgr2hsv_all"]));
    drop(rgb_all);
    let hsv_all: Vec<u8> = (0u32..180 * 65536)
        .flat_map(|i| [(i >> 16) as u8, ((i >> 8) & 255) as u8, (i & 255) as u8])
        .collect();
    let to_bgr = |rgb: Vec<u8>| -> Vec<u8> {
        rgb.chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect()
    };
    let wide = to_bgr(hsv_to_rgb(&hsv_all, 4096));
    assert_eq!(
        checksum(&wide),
        s(&hsv_meta["hsv2bgr_4096"]),
        "4096-wide rows"
    );
    let n = u(&hsv_meta["hsv2bgr_31_pixels"]);
    let narrow = to_bgr(hsv_to_rgb(&hsv_all[..n * 3], 31));
    assert_eq!(
        checksum(&narrow),
        s(&hsv_meta["hsv2bgr_31"]),
        "31-wide rows"
    );
    Ok(())
}

// ---- properties of the random parts ----

/// A 40x30 sample whose labels are blocks and whose instances are the label regions of
/// classes 1 and 2 (so masks must stay equal to `semantic == k` through geometry).
fn blocks() -> Sample {
    let (w, h) = (40, 30);
    let semantic: Vec<u16> = (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            match (x / 10, y / 10) {
                (0, _) => 0,
                (1, 0) | (2, 1) => 1,
                (3, _) => 255,
                _ => 2,
            }
        })
        .collect();
    let image = (0..w * h)
        .flat_map(|i| [(i % w * 6) as u8, (i / w * 8) as u8, 77])
        .collect();
    let instances = [1u16, 2]
        .iter()
        .map(|&k| InstanceAnnotation {
            class_id: k as u32,
            mask: semantic.iter().map(|&v| v == k).collect(),
            iscrowd: false,
        })
        .collect();
    Sample {
        path: "blocks".into(),
        width: w,
        height: h,
        image,
        semantic: Some(semantic),
        instances: Some(instances),
    }
}

#[test]
fn same_seed_same_output_and_masks_follow_labels() -> TestResult {
    let p = Pipeline::new(vec![
        Transform::RandomResize {
            scale: [60, 30],
            ratio_range: [0.5, 2.0],
            keep_ratio: true,
        },
        Transform::RandomCrop {
            crop_size: [24, 24],
            cat_max_ratio: 0.75,
            ignore_index: 255,
        },
        Transform::RandomFlip {
            prob: 0.5,
            direction: FlipDirection::Horizontal,
        },
        Transform::Pad {
            size: Some([24, 24]),
            size_divisor: None,
            pad_to_square: false,
            pad_val: PadVal::default(),
        },
    ])?;
    let mut flips = 0;
    for seed in 0..200u64 {
        let a = p.apply(blocks(), &mut Rng::new(seed))?;
        let b = p.apply(blocks(), &mut Rng::new(seed))?;
        assert_eq!(a, b, "seed {seed}");
        assert_eq!((a.width, a.height), (24, 24));
        let sem = a.semantic.as_ref().ok_or("semantic")?;
        for inst in a.instances.as_ref().ok_or("instances")? {
            let want: Vec<bool> = sem.iter().map(|&v| v == inst.class_id as u16).collect();
            assert_eq!(
                inst.mask, want,
                "seed {seed}: mask of class {}",
                inst.class_id
            );
        }
        for k in [1u16, 2] {
            let present = sem.contains(&k);
            let listed = a
                .instances
                .as_ref()
                .ok_or("instances")?
                .iter()
                .any(|i| i.class_id == k as u32);
            assert_eq!(
                present, listed,
                "seed {seed}: empty instances are dropped, others kept"
            );
        }
        if a.applied
            .contains(&Applied::Flip(Some(FlipDirection::Horizontal)))
        {
            flips += 1;
        }
    }
    assert!((60..140).contains(&flips), "{flips} flips in 200");
    let a = p.apply(blocks(), &mut Rng::new(1))?;
    let b = p.apply(blocks(), &mut Rng::new(2))?;
    assert_ne!(a.applied, b.applied);
    Ok(())
}

#[test]
fn crops_stay_inside_and_respect_cat_max_ratio() -> TestResult {
    let sample = blocks();
    let sem = sample.semantic.clone().ok_or("semantic")?;
    for seed in 0..500u64 {
        let mut rng = Rng::new(seed);
        let crop = [5 + (seed % 30) as usize, 3 + (seed % 45) as usize];
        let mut draws = 0;
        let b = select_crop(40, 30, Some(&sem), crop, 0.75, 255, &mut |mh, mw| {
            draws += 1;
            (
                rng.below(mh as u64 + 1) as usize,
                rng.below(mw as u64 + 1) as usize,
            )
        });
        assert!(
            b.x1 < b.x2 && b.x2 <= 40 && b.y1 < b.y2 && b.y2 <= 30,
            "{b:?}"
        );
        assert_eq!((b.height(), b.width()), (crop[0].min(30), crop[1].min(40)));
        assert!((1..=11).contains(&draws));
        if draws < 11 {
            assert!(crop_passes(&sem, 40, &b, 0.75, 255), "seed {seed}: {b:?}");
        }
    }
    // With the check disabled (ratio 1) a single window is drawn.
    let mut draws = 0;
    select_crop(40, 30, Some(&sem), [10, 10], 1.0, 255, &mut |_, _| {
        draws += 1;
        (0, 0)
    });
    assert_eq!(draws, 1);
    Ok(())
}

#[test]
fn rng_ranges_and_photometric_draws() {
    let mut r = Rng::new(7);
    for n in [1u64, 2, 3, 10, 1 << 40] {
        for _ in 0..1000 {
            assert!(r.below(n) < n);
        }
    }
    let mut hue = std::collections::BTreeSet::new();
    for _ in 0..10_000 {
        let x = r.uniform();
        assert!((0.0..1.0).contains(&x));
        hue.insert(r.int_range(-18, 18));
    }
    assert_eq!(hue.first(), Some(&-18));
    assert_eq!(
        hue.last(),
        Some(&17),
        "numpy's randint excludes the upper bound"
    );
    assert_ne!(Rng::for_sample(1, 0, 5), Rng::for_sample(1, 1, 5));
    assert_eq!(Rng::for_sample(1, 2, 5), Rng::for_sample(1, 2, 5));
}

#[test]
fn pipeline_json_presets_and_validation() -> TestResult {
    let p = Pipeline::mmseg_train([2048, 512], [512, 512], true);
    let json = serde_json::to_string(&p)?;
    assert!(json.contains(r#""type":"RandomResize""#), "{json}");
    let back: Pipeline = serde_json::from_str(&json)?;
    assert_eq!(back, p);

    // A 600x400 photo through the full preset: a normalised 512x512 crop.
    let sample = Sample {
        path: "p".into(),
        width: 600,
        height: 400,
        image: vec![128; 600 * 400 * 3],
        semantic: Some((0..600 * 400).map(|i| (i % 7) as u16).collect()),
        instances: None,
    };
    let out = p.apply(sample, &mut Rng::new(3))?;
    assert_eq!((out.width, out.height), (512, 512));
    assert!(matches!(out.image, AugImage::Normalized(_)));
    assert!(out.into_sample().is_err());

    let err = serde_json::from_str::<Pipeline>(r#"[{"type": "Rotate"}]"#)
        .err()
        .ok_or("unknown type parsed")?
        .to_string();
    assert!(
        err.contains("RandomResize") && err.contains("PhotoMetricDistortion"),
        "{err}"
    );
    let err = serde_json::from_str::<Pipeline>(r#"[{"type": "RandomFlip", "prob": 0.5, "p": 1}]"#)
        .err()
        .ok_or("unknown field parsed")?
        .to_string();
    assert!(err.contains("unknown field"), "{err}");
    let err = serde_json::from_str::<Pipeline>(
        r#"[{"type": "Normalize", "mean": [0,0,0], "std": [1,1,1]},
            {"type": "Resize", "scale": [10, 10]}]"#,
    )
    .err()
    .ok_or("resize after normalize parsed")?
    .to_string();
    assert!(
        err.contains("step 1") && err.contains("after Normalize"),
        "{err}"
    );
    assert!(Pipeline::new(vec![Transform::RandomFlip {
        prob: 1.5,
        direction: FlipDirection::Horizontal
    }])
    .is_err());
    assert!(Pipeline::new(vec![Transform::Pad {
        size: Some([4, 4]),
        size_divisor: Some(32),
        pad_to_square: false,
        pad_val: PadVal::default()
    }])
    .is_err());
    // Bad sample buffers are errors, not panics.
    let bad = Sample {
        path: "b".into(),
        width: 4,
        height: 4,
        image: vec![0; 5],
        semantic: None,
        instances: None,
    };
    assert!(p.apply(bad, &mut Rng::new(0)).is_err());
    // So are buffers made inconsistent through the public fields.
    let mut a = Augmented::new(blocks())?;
    a.semantic = Some(vec![0; 3]);
    assert!(a.flip(FlipDirection::Horizontal).is_err());
    assert!(a.resize(10, 10).is_err());
    assert!(a
        .crop(CropBox {
            y1: 0,
            y2: 1,
            x1: 0,
            x2: 1
        })
        .is_err());
    assert!(!crop_passes(
        &[0; 4],
        2,
        &CropBox {
            y1: 0,
            y2: 3,
            x1: 0,
            x2: 2
        },
        0.75,
        255
    ));
    Ok(())
}
