//! The demo dataset of segkit's demo model (preset
//! `segkit_demo_r18w16_psp_fashion-128x128`, [`segkit::models::encoder_decoder::demo`]):
//! [`FashionMnist`] and [`make_demo_data`] compose canvases deterministically from
//! Fashion-MNIST items (Debian package `dataset-fashion-mnist`) over procedural backgrounds,
//! written in the `custom` layout; [`demo_train_config`] and [`finish_demo`] run and record the
//! demo training.
//!
//! - [`fashion_mnist`]: reading the items;
//! - [`canvas`]: composing one canvas;
//! - this module: writing the splits as PNGs;
//! - [`training`]: the training config and the record of the run.

use std::path::{Path, PathBuf};

use image::ImageBuffer;
use rayon::prelude::*;
use segkit::train::{TrainError, TrainResult};

pub(crate) mod canvas;
pub mod coco_instances;
pub mod coco_panoptic;
mod fashion_mnist;
#[cfg(test)]
mod figures;
#[cfg(test)]
mod test_canvases;
mod training;

use canvas::compose_canvas;
pub use fashion_mnist::{FashionMnist, FASHION_MNIST_DIR, FASHION_MNIST_INSTALL};
pub use training::{demo_train_config, finish_demo, write_json, DemoReport};

/// Seed of the training canvases; the validation canvases use `seed + 1`.
pub const DEMO_SEED: u64 = 20_240_601;

/// Canvas side of the demo dataset.
pub const DEMO_SIZE: usize = 128;

/// Writes a PNG with the best compression and adaptive filtering.
fn save<P, C>(img: &ImageBuffer<P, C>, path: &Path) -> TrainResult<()>
where
    P: image::Pixel + image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let err = |e: &dyn std::fmt::Display| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let f = std::fs::File::create(path).map_err(|e| err(&e))?;
    let enc = PngEncoder::new_with_quality(
        std::io::BufWriter::new(f),
        CompressionType::Best,
        FilterType::Adaptive,
    );
    use image::EncodableLayout;
    enc.write_image(
        img.as_raw().as_bytes(),
        img.width(),
        img.height(),
        P::COLOR_TYPE,
    )
    .map_err(|e| err(&e))
}

/// Writes canvases `first..first + count` of split `split` (`images/`, `annotations/`,
/// `instances/` under `out`), composed from `items` with `seed`.
pub fn write_split(
    items: &FashionMnist,
    out: &Path,
    split: &str,
    seed: u64,
    first: usize,
    count: usize,
) -> TrainResult<()> {
    let dirs: Vec<PathBuf> = ["images", "annotations", "instances"]
        .iter()
        .map(|d| out.join(d).join(split))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| TrainError::Io {
            path: d.clone(),
            reason: e.to_string(),
        })?;
    }
    (first..first + count).into_par_iter().try_for_each(|i| {
        let c = compose_canvas(items, seed, i as u64, DEMO_SIZE);
        let name = format!("{i:05}.png");
        save(&c.image, &dirs[0].join(&name))?;
        save(&c.semantic, &dirs[1].join(&name))?;
        save(&c.instances, &dirs[2].join(&name))
    })
}

/// Makes the demo dataset under `out`: `train` canvases from Fashion-MNIST's training items,
/// `val` canvases from its held-out `t10k` items.
pub fn make_demo_data(src: &Path, out: &Path, n_train: usize, n_val: usize) -> TrainResult<()> {
    let train = FashionMnist::load(src, "train")?;
    write_split(&train, out, "train", DEMO_SEED, 0, n_train)?;
    let val = FashionMnist::load(src, "t10k")?;
    write_split(&val, out, "val", DEMO_SEED + 1, 0, n_val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use segkit::models::encoder_decoder::demo::demo_config;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The generator is deterministic: the canvases it makes from Fashion-MNIST's `t10k`
    /// items are the committed validation subset (whose mIoU the CLI tests check).
    #[test]
    fn demo_canvases_generated_from_fashion_mnist_equal_the_committed_subset() {
        let src = Path::new(FASHION_MNIST_DIR);
        if !src.join("t10k-images-idx3-ubyte.gz").is_file() {
            segkit_core::testing::skip_unless_ci(
                "demo canvases generated from Fashion-MNIST vs the committed subset",
                &format!(
                    "Fashion-MNIST is not installed in {}: {FASHION_MNIST_INSTALL}",
                    src.display()
                ),
            );
            return;
        }
        let fixture = repo().join("tests/fixtures/demo_val");
        let metrics: serde_json::Value = serde_json::from_slice(
            &std::fs::read(repo().join("crates/segkit/demo/metrics.json")).unwrap(),
        )
        .unwrap();
        let n = metrics["fixture_subset"]["num_images"].as_u64().unwrap() as usize;
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        let items = FashionMnist::load(src, "t10k").unwrap();
        write_split(&items, &data, "val", DEMO_SEED + 1, 0, n).unwrap();
        let meta = demo_config().meta;
        let open = |root: &Path| {
            let ds = segkit::train::DatasetConfig::Custom {
                root: root.to_path_buf(),
                train_split: "train".into(),
                val_split: "val".into(),
                ignore_index: 255,
            };
            segkit::train::open_dataset(&ds, segkit::train::Split::Val, &meta).unwrap()
        };
        let (a, b) = (open(&data), open(&fixture));
        for i in 0..n {
            let (sa, sb) = (a.get(i).unwrap(), b.get(i).unwrap());
            assert!(
                sa.image == sb.image && sa.semantic == sb.semantic,
                "canvas {i} differs from the committed fixture"
            );
        }
    }
}
