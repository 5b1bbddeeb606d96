//! Shared helpers of segkit-data's fixture tests (fixtures: tests/fixtures/data/, written by
//! tests/parity/gen_data.py).
#![allow(dead_code)]

use serde_json::Value;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub fn path(name: &str) -> String {
    format!(
        "{}/{name}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/data")
    )
}

pub fn json(name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let s = std::fs::read_to_string(path(name))?;
    Ok(serde_json::from_str(&s)?)
}

/// An 8-bit grayscale PNG: (height, width, pixels row-major).
pub fn png_l8(name: &str) -> Result<(usize, usize, Vec<u8>), Box<dyn std::error::Error>> {
    let img = image::open(path(name))?;
    let img = match img {
        image::DynamicImage::ImageLuma8(i) => i,
        other => {
            return Err(format!("{name}: expected 8-bit grayscale, got {:?}", other.color()).into())
        }
    };
    Ok((img.height() as usize, img.width() as usize, img.into_raw()))
}

/// An 8-bit RGB PNG: (height, width, interleaved pixels).
pub fn png_rgb8(name: &str) -> Result<(usize, usize, Vec<u8>), Box<dyn std::error::Error>> {
    let img = image::open(path(name))?;
    let img = match img {
        image::DynamicImage::ImageRgb8(i) => i,
        other => return Err(format!("{name}: expected 8-bit RGB, got {:?}", other.color()).into()),
    };
    Ok((img.height() as usize, img.width() as usize, img.into_raw()))
}

/// A JSON number, NaN for null.
pub fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(num).collect())
        .unwrap_or_default()
}

pub fn uint(v: &Value) -> Result<u64, Box<dyn std::error::Error>> {
    v.as_u64()
        .ok_or_else(|| format!("expected an unsigned integer, got {v}").into())
}

pub fn string(v: &Value) -> Result<&str, Box<dyn std::error::Error>> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, got {v}").into())
}

/// |a - b| <= rtol * max(|b|, tiny); NaN equals NaN.
pub fn close(a: f64, b: f64, rtol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    (a - b).abs() <= rtol * b.abs().max(1e-12)
}

pub fn assert_close(what: &str, ours: f64, reference: f64, rtol: f64) {
    assert!(
        close(ours, reference, rtol),
        "{what}: ours {ours} vs reference {reference}"
    );
}
