//! Dataset readers on tiny synthetic trees of each layout (written into a temporary folder by
//! the tests), and every error path: the message must name the offending file. One module per
//! layout; the tree writers and assertions they share are here.

mod ade20k;
mod cityscapes;
mod coco_instances;
mod coco_panoptic;
mod custom;
mod voc;

use std::path::Path;

use segkit_data::Error;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const W: u32 = 8;
const H: u32 = 6;

fn mkdirs(p: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))
}

/// An 8x6 RGB test image (PNG or JPEG by extension); pixel (x, y) = (30x + k, 40y, 7k).
fn write_rgb(p: &Path, k: u8) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    write_rgb_sized(p, k, W, H)
}

fn write_rgb_sized(p: &Path, k: u8, w: u32, h: u32) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    mkdirs(p)?;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 30) as u8 + k, (y * 40) as u8, 7 * k])
    });
    img.save(p)?;
    Ok(img.into_raw())
}

fn write_grey(p: &Path, data: &[u8], w: u32, h: u32) -> TestResult {
    mkdirs(p)?;
    image::GrayImage::from_raw(w, h, data.to_vec())
        .ok_or("size")?
        .save(p)?;
    Ok(())
}

fn write_u16(p: &Path, data: &[u16]) -> TestResult {
    mkdirs(p)?;
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(W, H, data.to_vec())
        .ok_or("size")?
        .save(p)?;
    Ok(())
}

/// A palette PNG of indices (bit depth 8, or 4 with `four_bit`).
fn write_palette(p: &Path, idx: &[u8], four_bit: bool) -> TestResult {
    mkdirs(p)?;
    let f = std::io::BufWriter::new(std::fs::File::create(p)?);
    let mut enc = png::Encoder::new(f, W, H);
    enc.set_color(png::ColorType::Indexed);
    let n = if four_bit { 16 } else { 256 };
    let palette: Vec<u8> = segkit_data::palette::voc_palette(n)
        .into_iter()
        .flatten()
        .collect();
    enc.set_palette(palette);
    let data: Vec<u8> = if four_bit {
        enc.set_depth(png::BitDepth::Four);
        idx.chunks(W as usize)
            .flat_map(|row| {
                row.chunks(2)
                    .map(|c| (c[0] << 4) | c.get(1).copied().unwrap_or(0))
            })
            .collect()
    } else {
        enc.set_depth(png::BitDepth::Eight);
        idx.to_vec()
    };
    let mut wr = enc.write_header()?;
    wr.write_image_data(&data)?;
    Ok(())
}

/// An 8-bit label map as the 16-bit values a sample holds.
fn wide(labels: &[u8]) -> Vec<u16> {
    labels.iter().map(|&v| u16::from(v)).collect()
}

fn labels(f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
    (0..(W * H) as usize)
        .map(|i| f(i % W as usize, i / W as usize))
        .collect()
}

/// Asserts a `BadFile` error whose message names `name`.
fn assert_bad_file<T: std::fmt::Debug>(r: Result<T, Error>, name: &str) {
    match r {
        Err(e @ Error::BadFile { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "message {msg:?} does not name {name:?}");
        }
        other => panic!("expected a BadFile error naming {name}, got {other:?}"),
    }
}

fn tmp() -> Result<tempfile::TempDir, std::io::Error> {
    tempfile::tempdir()
}
