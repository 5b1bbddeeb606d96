//! The demo dataset of segkit's demo model (preset
//! `segkit_demo_r18w16_psp_fashion-128x128`, [`segkit::models::encoder_decoder::demo`]):
//! [`FashionMnist`] and [`make_demo_data`] compose canvases deterministically from
//! Fashion-MNIST items (Debian package `dataset-fashion-mnist`) over procedural backgrounds,
//! written in the `custom` layout; [`demo_train_config`] and [`finish_demo`] run and record the
//! demo training.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Luma, RgbImage};
use rayon::prelude::*;
use segkit::models::encoder_decoder::demo::{demo_config, DEMO_PRESET};
use segkit::train::data::SampleRng;
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

/// One composed canvas.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// The RGB image.
    pub image: RgbImage,
    /// Class ids (0 background, `1 + label` for items).
    pub semantic: GrayImage,
    /// Instance ids (0 none, `1..=n` in drawing order; later items occlude earlier ones).
    pub instances: ImageBuffer<Luma<u16>, Vec<u16>>,
}

/// Intensity above which an item pixel is labelled (of 255).
pub const LABEL_THRESHOLD: u8 = 48;

fn random_color(rng: &mut SampleRng) -> [f64; 3] {
    [rng.uniform(), rng.uniform(), rng.uniform()].map(|v| 255.0 * v)
}

/// A procedural background of `size x size`: value noise (a random lattice of 4-31 cells a
/// side, bilinearly interpolated), a linear gradient, sinusoidal stripes or a checkerboard,
/// each between two random colours at a random angle / frequency / cell size.
fn background(size: usize, rng: &mut SampleRng) -> Vec<[f64; 3]> {
    let kind = rng.below(4);
    let (c0, c1) = (random_color(rng), random_color(rng));
    let mix = |t: f64| -> [f64; 3] {
        let t = t.clamp(0.0, 1.0);
        [0, 1, 2].map(|k| c0[k] * (1.0 - t) + c1[k] * t)
    };
    let angle = rng.uniform() * std::f64::consts::PI;
    let (ca, sa) = (angle.cos(), angle.sin());
    let freq = 0.05 + 0.25 * rng.uniform();
    let cell = 6 + rng.below(20);
    // Value noise: a random lattice, bilinearly interpolated.
    let g = 4 + rng.below(28);
    let lattice: Vec<f64> = (0..(g + 1) * (g + 1)).map(|_| rng.uniform()).collect();
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f64 / size as f64, y as f64 / size as f64);
            let t = match kind {
                0 => {
                    let (gx, gy) = (fx * g as f64, fy * g as f64);
                    let (ix, iy) = ((gx as usize).min(g - 1), (gy as usize).min(g - 1));
                    let (tx, ty) = (gx - ix as f64, gy - iy as f64);
                    let at = |i: usize, j: usize| lattice[j * (g + 1) + i];
                    let top = at(ix, iy) * (1.0 - tx) + at(ix + 1, iy) * tx;
                    let bot = at(ix, iy + 1) * (1.0 - tx) + at(ix + 1, iy + 1) * tx;
                    top * (1.0 - ty) + bot * ty
                }
                1 => (fx * ca + fy * sa + 1.0) / 2.0,
                2 => 0.5 + 0.5 * ((x as f64 * ca + y as f64 * sa) * freq).sin(),
                _ => (((x / cell) + (y / cell)) % 2) as f64,
            };
            out.push(mix(t));
        }
    }
    out
}

/// Bilinear resize of a `28 x 28` item to `s x s` (half-pixel centres, edge clamped).
fn resize_item(item: &[u8], s: usize) -> Vec<f64> {
    let scale = ITEM as f64 / s as f64;
    let at = |x: isize, y: isize| -> f64 {
        let x = x.clamp(0, ITEM as isize - 1) as usize;
        let y = y.clamp(0, ITEM as isize - 1) as usize;
        item[y * ITEM + x] as f64
    };
    let mut out = Vec::with_capacity(s * s);
    for y in 0..s {
        let sy = ((y as f64 + 0.5) * scale - 0.5).max(0.0);
        let (y0, ty) = (sy.floor() as isize, sy - sy.floor());
        for x in 0..s {
            let sx = ((x as f64 + 0.5) * scale - 0.5).max(0.0);
            let (x0, tx) = (sx.floor() as isize, sx - sx.floor());
            let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
            let bot = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
            out.push(top * (1.0 - ty) + bot * ty);
        }
    }
    out
}

/// Composes canvas `index` of a run seeded with `seed` from `items`: a procedural background
/// and 2-5 items at random positions and sizes (20-64 px), each tinted with a random colour
/// (shaded by the item's intensity). Pixels whose item intensity exceeds
/// [`LABEL_THRESHOLD`] take the class `1 + label` and the item's instance id.
pub fn compose_canvas(items: &FashionMnist, seed: u64, index: u64, size: usize) -> Canvas {
    let mut rng = SampleRng::for_sample(seed, index);
    let mut px = background(size, &mut rng);
    let mut sem = vec![0u8; size * size];
    let mut inst = vec![0u16; size * size];
    let count = 2 + rng.below(4);
    for k in 0..count {
        let idx = rng.below(items.len().max(1));
        let label = items.labels[idx];
        let s = (20 + rng.below(45)).min(size);
        let a = resize_item(items.item(idx), s);
        let (ox, oy) = (rng.below(size - s + 1), rng.below(size - s + 1));
        let tint = random_color(&mut rng);
        // Scale the tint so that its brightest channel is 140-255: items stay visible.
        let bright = tint.iter().fold(0f64, |m, &v| m.max(v)).max(1.0);
        let target = 140.0 + 115.0 * rng.uniform();
        let tint = tint.map(|v| v * target / bright);
        let flip = rng.uniform() < 0.5;
        for y in 0..s {
            for x in 0..s {
                let sx = if flip { s - 1 - x } else { x };
                let v = a[y * s + sx];
                if v <= 8.0 {
                    continue;
                }
                let alpha = (v / 255.0 * 1.6).min(1.0);
                let shade = 0.45 + 0.55 * v / 255.0;
                let p = (oy + y) * size + ox + x;
                for c in 0..3 {
                    px[p][c] = px[p][c] * (1.0 - alpha) + tint[c] * shade * alpha;
                }
                if v > LABEL_THRESHOLD as f64 {
                    sem[p] = 1 + label;
                    inst[p] = (k + 1) as u16;
                }
            }
        }
    }
    let raw: Vec<u8> = px
        .iter()
        .flat_map(|c| c.map(|v| v.round().clamp(0.0, 255.0) as u8))
        .collect();
    let sz = size as u32;
    Canvas {
        image: RgbImage::from_raw(sz, sz, raw).unwrap_or_else(|| RgbImage::new(sz, sz)),
        semantic: GrayImage::from_raw(sz, sz, sem).unwrap_or_else(|| GrayImage::new(sz, sz)),
        instances: ImageBuffer::from_raw(sz, sz, inst).unwrap_or_else(|| ImageBuffer::new(sz, sz)),
    }
}

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

/// The training config of the demo run: AdamW (lr 3e-3, weight decay 0.01, no decay on norms
/// and biases), 100 warm-up iterations from 0.1, poly decay to 1e-5, batch 8, random flips,
/// six evaluations over the run on the whole validation split.
pub fn demo_train_config(
    data: &Path,
    output_dir: &Path,
    iterations: usize,
) -> segkit::train::TrainConfig {
    use segkit::train::config::*;
    TrainConfig {
        model: ModelSpec::Preset {
            name: DEMO_PRESET.to_string(),
        },
        dataset: DatasetConfig::Custom {
            root: data.to_path_buf(),
            train_split: "train".into(),
            val_split: "val".into(),
            ignore_index: 255,
        },
        pipeline: vec![TransformConfig::RandomFlip {
            prob: 0.5,
            direction: segkit::data::augment::FlipDirection::Horizontal,
        }],
        optimizer: OptimizerConfig::AdamW {
            lr: 3e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            decay_norm_and_bias: false,
        },
        schedule: ScheduleConfig {
            policy: LrPolicy::Poly {
                power: 0.9,
                min_lr: 1e-5,
            },
            warmup: Some(WarmupConfig {
                iters: 100,
                start_factor: 0.1,
            }),
        },
        iterations,
        batch_size: 8,
        accumulate: 1,
        aux_loss_weight: 0.4,
        eval_interval: (iterations / 6).max(1),
        checkpoint_interval: 0,
        log_interval: 10,
        eval_batch_size: Some(8),
        val_limit: None,
        seed: 0,
        load_from: None,
        output_dir: output_dir.to_path_buf(),
    }
}

/// Writes a value as pretty JSON (atomically).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> TrainResult<()> {
    let s = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    segkit::train::checkpoint::write_atomic(path, format!("{s}\n").as_bytes())
}

/// What `crates/segkit/demo/metrics.json` records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DemoReport {
    /// The preset.
    pub preset: String,
    /// The training config of the run.
    pub train_config: segkit::train::TrainConfig,
    /// Training canvases.
    pub train_canvases: usize,
    /// Loss of the last iteration.
    pub final_loss: f64,
    /// Mean loss over the last 100 iterations.
    pub final_loss_mean100: f64,
    /// Iterations per second of the run.
    pub iters_per_sec: f64,
    /// Wall-clock seconds of the training loop (evaluations included).
    pub train_seconds: f64,
    /// Size of `model.safetensors` in bytes.
    pub model_bytes: u64,
    /// Number of model parameters (BatchNorm statistics excluded).
    pub parameters: usize,
    /// Held-out validation results (canvases of Fashion-MNIST's `t10k` items).
    pub val: segkit::train::EvalResult,
    /// Results on the committed subset `tests/fixtures/demo_val` (its first canvases), which
    /// `segkit eval` reproduces exactly.
    pub fixture_subset: segkit::train::EvalResult,
}

/// The logged training loss and validation mIoU of a run's `metrics.jsonl`:
/// `(iteration, loss)` and `(iteration, mIoU)` points.
#[allow(clippy::type_complexity)]
pub fn read_curve(path: &Path) -> TrainResult<(Vec<(f64, f64)>, Vec<(f64, f64)>)> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (mut loss, mut miou) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let it = v.get("iter").and_then(|i| i.as_f64()).unwrap_or(0.0);
        match v.get("type").and_then(|t| t.as_str()) {
            Some("train") => {
                if let Some(l) = v.get("loss").and_then(|l| l.as_f64()) {
                    loss.push((it, l));
                }
            }
            Some("val") => {
                if let Some(m) = v.get("mIoU").and_then(|l| l.as_f64()) {
                    miou.push((it, m));
                }
            }
            _ => {}
        }
    }
    Ok((loss, miou))
}

fn copy(from: &Path, to: &Path) -> TrainResult<()> {
    let bytes = std::fs::read(from).map_err(|e| TrainError::Io {
        path: from.to_path_buf(),
        reason: e.to_string(),
    })?;
    segkit::train::checkpoint::write_atomic(to, &bytes)
}

/// After the demo run of `cfg`: copies the model and its config to `out`, evaluates it on the
/// whole validation split and on its first `n_fixture` canvases (copied to `fixture`), and
/// writes `out/metrics.json` and `out/curve.png`.
pub fn finish_demo(
    cfg: &segkit::train::TrainConfig,
    data: &Path,
    out: &Path,
    fixture: &Path,
    n_fixture: usize,
) -> TrainResult<DemoReport> {
    use segkit::train::trainer::{CONFIG_FILE, LOG_FILE, MODEL_FILE};
    let run = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(|e| TrainError::Io {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    copy(&run.join(MODEL_FILE), &out.join(MODEL_FILE))?;
    copy(&run.join(CONFIG_FILE), &out.join(CONFIG_FILE))?;
    let model_cfg = demo_config();
    let model = segkit::EncoderDecoder::from_checkpoint(
        &model_cfg,
        out.join(MODEL_FILE),
        &candle_core::Device::Cpu,
    )?;
    let custom = |root: &Path| segkit::train::DatasetConfig::Custom {
        root: root.to_path_buf(),
        train_split: "train".into(),
        val_split: "val".into(),
        ignore_index: 255,
    };
    let meta = &model_cfg.meta;
    let val = segkit::train::open_dataset(&custom(data), segkit::train::Split::Val, meta)?;
    let val_result = segkit::train::evaluate(&model, val.as_ref(), 8, |_, _| {})?;
    // The committed subset: the first canvases of the validation split.
    for sub in ["images", "annotations"] {
        let dir = fixture.join(sub).join("val");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| TrainError::Io {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::Io {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        for i in 0..n_fixture {
            let name = format!("{i:05}.png");
            copy(&data.join(sub).join("val").join(&name), &dir.join(&name))?;
        }
    }
    let sub = segkit::train::open_dataset(&custom(fixture), segkit::train::Split::Val, meta)?;
    let sub_result = segkit::train::evaluate(&model, sub.as_ref(), 8, |_, _| {})?;
    let (loss, miou) = read_curve(&run.join(LOG_FILE))?;
    segkit::train::plot::save_png(
        &segkit::train::plot::training_curve(&loss, &miou),
        &out.join("curve.png"),
    )?;
    let summary: serde_json::Value = std::fs::read_to_string(run.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let last: Vec<f64> = loss.iter().rev().take(10).map(|p| p.1).collect();
    let secs = std::fs::read_to_string(run.join(LOG_FILE))
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| v.get("elapsed").and_then(|e| e.as_f64()))
        })
        .unwrap_or(f64::NAN);
    let weights = segkit::core::checkpoint::StateDict::load(out.join(MODEL_FILE))?;
    let parameters = weights
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, t)| t.elem_count())
        .sum();
    // Record the run's paths relative to the repository (`out/../..`) when they are inside it.
    let mut recorded = cfg.clone();
    if let Some(repo) = out.parent().and_then(Path::parent) {
        let rel = |p: &mut PathBuf| {
            if let Ok(r) = p.strip_prefix(repo) {
                *p = r.to_path_buf();
            }
        };
        rel(&mut recorded.output_dir);
        if let segkit::train::DatasetConfig::Custom { root, .. } = &mut recorded.dataset {
            rel(root);
        }
    }
    let report = DemoReport {
        preset: DEMO_PRESET.to_string(),
        train_config: recorded,
        train_canvases: segkit::train::open_dataset(
            &custom(data),
            segkit::train::Split::Train,
            meta,
        )?
        .len(),
        final_loss: summary
            .get("final_loss")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN),
        final_loss_mean100: last.iter().sum::<f64>() / last.len().max(1) as f64,
        iters_per_sec: summary
            .get("iters_per_sec")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN),
        train_seconds: secs,
        model_bytes: std::fs::metadata(out.join(MODEL_FILE))
            .map(|m| m.len())
            .unwrap_or(0),
        parameters,
        val: val_result,
        fixture_subset: sub_result,
    };
    write_json(&out.join("metrics.json"), &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The generator is deterministic: the canvases it makes from Fashion-MNIST's `t10k`
    /// items are the committed validation subset (whose mIoU the CLI tests check).
    #[test]
    fn demo_canvases_generated_from_fashion_mnist_equal_the_committed_subset() {
        let src = Path::new(FASHION_MNIST_DIR);
        if !src.join("t10k-images-idx3-ubyte.gz").is_file() {
            eprintln!(
                "skipped: Fashion-MNIST is not installed ({}); `{FASHION_MNIST_INSTALL}` \
                 enables this test",
                src.display()
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
