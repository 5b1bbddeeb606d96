//! Fashion-MNIST's IDX files, as Debian's `dataset-fashion-mnist` package installs them.

use std::io::Read;
use std::path::Path;

use segkit::train::{TrainError, TrainResult};

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The command that installs them.
pub const FASHION_MNIST_INSTALL: &str = "sudo apt-get install dataset-fashion-mnist";

/// Side of a Fashion-MNIST item.
pub const ITEM: usize = 28;

/// The items of one Fashion-MNIST split: `28 x 28` grey images (garment bright on black) and
/// their labels 0..9.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    /// `len * 784` bytes, row-major.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

fn read_gz(path: &Path) -> TrainResult<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: format!("{e} (install the files with `{FASHION_MNIST_INSTALL}`)"),
    })?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            reason: format!("corrupt gzip: {e}"),
        })?;
    Ok(out)
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

impl FashionMnist {
    /// Reads split `name` (`train` or `t10k`) from `dir`
    /// (`{name}-images-idx3-ubyte.gz`, `{name}-labels-idx1-ubyte.gz`).
    pub fn load(dir: &Path, name: &str) -> TrainResult<Self> {
        let ip = dir.join(format!("{name}-images-idx3-ubyte.gz"));
        let lp = dir.join(format!("{name}-labels-idx1-ubyte.gz"));
        let images = read_gz(&ip)?;
        let labels = read_gz(&lp)?;
        let bad = |p: &Path, r: &str| TrainError::Io {
            path: p.to_path_buf(),
            reason: r.to_string(),
        };
        if images.len() < 16 || be32(&images, 0) != 0x803 {
            return Err(bad(&ip, "not an IDX3 image file"));
        }
        if labels.len() < 8 || be32(&labels, 0) != 0x801 {
            return Err(bad(&lp, "not an IDX1 label file"));
        }
        let (n, rows, cols) = (be32(&images, 4), be32(&images, 8), be32(&images, 12));
        if rows != ITEM || cols != ITEM || images.len() != 16 + n * ITEM * ITEM {
            return Err(bad(&ip, "unexpected size (expected 28 x 28 items)"));
        }
        if be32(&labels, 4) != n || labels.len() != 8 + n || labels[8..].iter().any(|&l| l > 9) {
            return Err(bad(&lp, "labels do not match the images"));
        }
        Ok(Self {
            images: images[16..].to_vec(),
            labels: labels[8..].to_vec(),
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Item `i` (784 bytes).
    pub fn item(&self, i: usize) -> &[u8] {
        &self.images[i * ITEM * ITEM..(i + 1) * ITEM * ITEM]
    }
}
