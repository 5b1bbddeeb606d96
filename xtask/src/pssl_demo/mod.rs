//! `cargo xtask pssl-demo`: PSSL end to end on Fashion-MNIST (docs/pssl_demo.md records a
//! run).
//!
//! 1. Single-item images ([`images`]): one Fashion-MNIST training item on a procedural
//!    background (the demo canvases' drawing code), `--size` pixels a side, the item's drawn
//!    pixels kept as its true foreground. Classifier / PSSL training images are items
//!    `0..--train`, the held-out images the next `--heldout` items.
//! 2. An ensemble of 15 classifiers ([`ensemble`]) of different backbones, widths, depths and
//!    seeds, trained with `segkit::train::classify`; held-out top-1 accuracy of each.
//! 3. PSSL labels ([`labels`]) with `segkit::train::pssl` (SmoothGrad, channel max,
//!    consensus, deciles): the held-out images' D9-vs-foreground IoU for consensus sizes 1,
//!    3, 5, 15 (disjoint subsets of a seeded permutation of the members, averaged), next to
//!    chance, a centre prior and the bound of a mask of D9's size; D9 labels of the first
//!    `--pssl-train` training images with all 15 members.
//!    The stage writes the PSSL dataset and its record `WORK/pssl-data/labels.json`.
//! 4. The demo PSPNet-R50 ([`segment::r50_config`]: dilated ResNetV1c-50 at a quarter width)
//!    pre-trained on those labels (weighted CE, 0.1 background), then fine-tuned on the demo
//!    canvases, against (a) from scratch and (b) the backbone of a ResNetV1c-50 classifier
//!    with the same body trained apart from the ensemble ([`arms`]); same fine-tuning
//!    budget, `--seeds` seeds per arm; held-out mIoU of each, mean and spread per arm.
//!
//! `pssl-demo [--size N] [--train N] [--pssl-train N] [--heldout N] [--epochs N] [--samples N]
//! [--pretrain-iters N] [--finetune-iters N] [--val N] [--seeds N] [--from-labels DIR]
//! [--data DIR] [--work DIR]`; results in `WORK/results.json` (default `target/pssl-demo`),
//! tables printed as Markdown. `--from-labels DIR` reuses the label stage recorded in
//! `DIR/labels.json` (its sizes must match) and runs only step 4.

pub mod arms;
pub mod ensemble;
pub mod images;
pub mod labels;
pub mod segment;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use segkit::train::pssl::{NoiseLevel, SmoothGrad};
use segkit::train::TrainResult;

use crate::demo_data::{self as demo, FashionMnist};
use arms::Comparison;
use ensemble::{MemberRecord, TrainedMember};
use images::ItemSet;
use labels::IouRow;

/// Seed of the single-item images.
pub const ITEM_SEED: u64 = 20_261_205;
/// Seed of the member subsets and of the chance baseline.
pub const SUBSET_SEED: u64 = 13;

const USAGE: &str = "usage: cargo xtask pssl-demo [--size N] [--train N] [--pssl-train N] \
                     [--heldout N] [--epochs N] [--samples N] [--pretrain-iters N] [--finetune-iters N] \
                     [--val N] [--seeds N] [--from-labels DIR] [--data DIR] [--work DIR]";

/// The sizes of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sizes {
    /// Side of the single-item images.
    pub size: usize,
    /// Classifier training images (items `0..train`).
    pub train: usize,
    /// PSSL pre-training images: the first this many classifier training images, labelled
    /// by the ensemble (as PSSL labels the classifiers' own training set).
    pub pssl_train: usize,
    /// Held-out images (accuracy, label IoU, the pre-training's validation).
    pub heldout: usize,
    /// Classifier epochs.
    pub epochs: usize,
    /// Classifier batch.
    pub batch: usize,
    /// SmoothGrad noisy copies per image.
    pub samples: usize,
    /// SmoothGrad noise, a fraction of each image's value range.
    pub noise: f64,
    /// Images per explanation chunk.
    pub chunk: usize,
    /// PSSL pre-training iterations (batch 8).
    pub pretrain_iters: usize,
    /// Fine-tuning iterations of each of the three runs (batch 8).
    pub finetune_iters: usize,
    /// Validation canvases of the fine-tuning evaluation.
    pub val: usize,
    /// Seeds per arm (pre-training, fine-tuning: initialisation, data order, flips).
    #[serde(default = "one")]
    pub seeds: usize,
}

fn one() -> usize {
    1
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            size: 64,
            train: 3000,
            pssl_train: 1000,
            heldout: 200,
            epochs: 10,
            batch: 32,
            samples: 8,
            noise: 0.15,
            chunk: 16,
            pretrain_iters: 600,
            finetune_iters: 300,
            val: 300,
            seeds: 3,
        }
    }
}

/// What the label stage records (`PSSL_DATA/labels.json`, the stamp that lets
/// `--from-labels` reuse the stage).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LabelStage {
    /// The sizes the stage ran with (those that shape the labels must match on reuse).
    pub sizes: Sizes,
    /// Seed of the images.
    pub item_seed: u64,
    /// Seed of the subsets and chance maps.
    pub subset_seed: u64,
    /// The ensemble.
    pub members: Vec<MemberRecord>,
    /// D9-vs-foreground IoU on the held-out images by consensus size, then the references.
    pub label_iou: Vec<IouRow>,
    /// D9-vs-foreground IoU of the training images' labels (all members).
    pub train_label_iou: f64,
    /// Seconds per stage (images, classifiers, held-out labels, training labels).
    pub seconds: Vec<(String, f64)>,
}

impl LabelStage {
    /// Why the stage recorded here cannot stand in for one run with `sizes`, if it cannot.
    pub fn mismatch(&self, sizes: &Sizes) -> Option<String> {
        let (a, b) = (&self.sizes, sizes);
        let pairs = [
            ("size", a.size, b.size),
            ("train", a.train, b.train),
            ("pssl_train", a.pssl_train, b.pssl_train),
            ("heldout", a.heldout, b.heldout),
            ("epochs", a.epochs, b.epochs),
            ("batch", a.batch, b.batch),
            ("samples", a.samples, b.samples),
        ];
        let mut bad: Vec<String> = pairs
            .iter()
            .filter(|(_, x, y)| x != y)
            .map(|(n, x, y)| format!("{n} {x} (asked {y})"))
            .collect();
        if a.noise != b.noise {
            bad.push(format!("noise {} (asked {})", a.noise, b.noise));
        }
        if self.item_seed != ITEM_SEED || self.subset_seed != SUBSET_SEED {
            bad.push("image / subset seeds".into());
        }
        (!bad.is_empty()).then(|| bad.join(", "))
    }
}

/// Everything a run records (`results.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Results {
    /// The command's arguments.
    pub command: String,
    /// Sizes.
    pub sizes: Sizes,
    /// The label stage (ensemble, label IoU), computed or reused.
    pub labels: LabelStage,
    /// The directory whose labels were reused (`--from-labels`), if any.
    pub labels_from: Option<PathBuf>,
    /// The segmentation comparison over seeds.
    pub comparison: Comparison,
    /// Seconds per stage of this run.
    pub seconds: Vec<(String, f64)>,
}

/// Paths of a run.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// The demo canvases (`custom` layout, `train` / `val`).
    pub canvases: PathBuf,
    /// Work directory (PSSL dataset, runs, results).
    pub work: PathBuf,
}

fn stage(seconds: &mut Vec<(String, f64)>, name: &str, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    eprintln!("xtask: stage `{name}` done in {s:.0} s");
    seconds.push((name.to_string(), s));
}

/// Labels of the training images (all members), in blocks, and their mean IoU.
fn training_labels(
    trained: &[TrainedMember],
    sg: &SmoothGrad,
    set: &ItemSet,
    chunk: usize,
) -> TrainResult<(Vec<Vec<u8>>, f64)> {
    let models: Vec<_> = trained.iter().map(|m| &m.trained.model).collect();
    let (mut out, mut sum) = (Vec::with_capacity(set.len()), 0.0);
    let block = 256;
    let mut start = 0;
    while start < set.len() {
        let end = (start + block).min(set.len());
        let maps = labels::member_maps(&models, sg, set, start..end, chunk)?;
        for j in 0..end - start {
            let per: Vec<Vec<f32>> = maps.iter().map(|m| m[j].clone()).collect();
            let l = labels::pssl_label(set, start + j, &per);
            let d9: Vec<bool> = l.iter().map(|v| *v != 0).collect();
            sum += images::iou(&d9, set.fg(start + j));
            out.push(l);
        }
        eprintln!("xtask: PSSL labels {end}/{}", set.len());
        start = end;
    }
    Ok((out, sum / set.len().max(1) as f64))
}

fn io(path: &Path, e: impl std::fmt::Display) -> segkit::train::TrainError {
    segkit::train::TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The label stage: the ensemble, the held-out IoU table, the training images' labels
/// written with the held-out images' true labels as the PSSL dataset `pssl_data` (an earlier
/// one there is replaced), and its record `pssl_data/labels.json`.
fn label_stage(
    train: &ItemSet,
    held: &ItemSet,
    items: &FashionMnist,
    sizes: &Sizes,
    pssl_data: &Path,
) -> TrainResult<LabelStage> {
    let dev = Device::Cpu;
    let mut seconds = Vec::new();
    let t = Instant::now();
    let (n, h) = (sizes.train, sizes.heldout);
    let members = ensemble::members(sizes.size);
    let (tx, hx) = (train.tensor(0..n, &dev)?, held.tensor(0..h, &dev)?);
    let trained = ensemble::train_members(
        &members,
        &tx,
        &train.classes,
        (&hx, &held.classes),
        sizes.epochs,
        sizes.batch,
    )?;
    drop((tx, hx));
    stage(&mut seconds, "classifiers", t);

    let t = Instant::now();
    let sg = SmoothGrad {
        samples: sizes.samples,
        noise: NoiseLevel::Fraction(sizes.noise),
        batch: 64,
    };
    let models: Vec<_> = trained.iter().map(|m| &m.trained.model).collect();
    let maps = labels::member_maps(&models, &sg, held, 0..h, sizes.chunk)?;
    let mut label_iou = labels::ensemble_rows(held, 0, &maps, &[1, 3, 5, 15], SUBSET_SEED);
    label_iou.extend(labels::reference_rows(held, 0..h, SUBSET_SEED));
    drop(maps);
    stage(&mut seconds, "held-out labels", t);

    let t = Instant::now();
    let pssl_set = ItemSet::make(items, ITEM_SEED, 0..sizes.pssl_train.min(n), sizes.size)?;
    let (train_labels, train_label_iou) = training_labels(&trained, &sg, &pssl_set, sizes.chunk)?;
    if pssl_data.exists() {
        std::fs::remove_dir_all(pssl_data).map_err(|e| io(pssl_data, e))?;
    }
    images::write_split(pssl_data, "train", &pssl_set, &train_labels)?;
    let truth: Vec<Vec<u8>> = (0..h).map(|i| images::true_label(held, i)).collect();
    images::write_split(pssl_data, "val", held, &truth)?;
    stage(&mut seconds, "training labels", t);
    let record = LabelStage {
        sizes: sizes.clone(),
        item_seed: ITEM_SEED,
        subset_seed: SUBSET_SEED,
        members: trained.into_iter().map(|m| m.record).collect(),
        label_iou,
        train_label_iou,
        seconds,
    };
    demo::write_json(&pssl_data.join("labels.json"), &record)?;
    Ok(record)
}

/// Reads the label stage recorded in `dir/labels.json`, checked against `sizes`.
pub fn reuse_labels(dir: &Path, sizes: &Sizes) -> TrainResult<LabelStage> {
    let path = dir.join("labels.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        io(
            &path,
            format!("{e} (the label stage's record; run without --from-labels to make it)"),
        )
    })?;
    let record: LabelStage = serde_json::from_str(&text).map_err(|e| io(&path, e))?;
    if let Some(m) = record.mismatch(sizes) {
        return Err(io(&path, format!("labels made with other sizes: {m}")));
    }
    for split in ["train", "val"] {
        let d = dir.join("images").join(split);
        if !d.is_dir() {
            return Err(io(&d, "missing: not a PSSL dataset of the demo"));
        }
    }
    Ok(record)
}

/// The whole pipeline on `items` (Fashion-MNIST's training split or a stand-in); with
/// `from_labels`, the label stage (ensemble, labels) recorded there is reused instead.
pub fn run_pipeline(
    items: &FashionMnist,
    sizes: &Sizes,
    dirs: &Dirs,
    command: &str,
    from_labels: Option<&Path>,
) -> TrainResult<Results> {
    let dev = Device::Cpu;
    let mut seconds = Vec::new();
    let t = Instant::now();
    let (n, h) = (sizes.train, sizes.heldout);
    let train = ItemSet::make(items, ITEM_SEED, 0..n, sizes.size)?;
    let held = ItemSet::make(items, ITEM_SEED, n..n + h, sizes.size)?;
    stage(&mut seconds, "images", t);

    let (labels, pssl_data) = match from_labels {
        Some(dir) => (reuse_labels(dir, sizes)?, dir.to_path_buf()),
        None => {
            let d = dirs.work.join("pssl-data");
            let l = label_stage(&train, &held, items, sizes, &d)?;
            seconds.extend(l.seconds.iter().cloned());
            (l, d)
        }
    };

    let t = Instant::now();
    let (tx, hx) = (train.tensor(0..n, &dev)?, held.tensor(0..h, &dev)?);
    let setup = arms::Setup {
        train: (&tx, &train.classes),
        heldout: (&hx, &held.classes),
        pssl_data: &pssl_data,
        canvases: &dirs.canvases,
        work: &dirs.work,
    };
    let budget = arms::Budget {
        epochs: sizes.epochs,
        batch: sizes.batch,
        pretrain_iters: sizes.pretrain_iters,
        finetune_iters: sizes.finetune_iters,
        heldout: h,
        val: sizes.val,
        seeds: sizes.seeds,
    };
    let comparison = arms::compare(&setup, &budget)?;
    stage(
        &mut seconds,
        "R50: classifier, pre-training, fine-tuning",
        t,
    );
    Ok(Results {
        command: command.to_string(),
        sizes: sizes.clone(),
        labels,
        labels_from: from_labels.map(Path::to_path_buf),
        comparison,
        seconds,
    })
}

/// The results as Markdown tables.
pub fn tables(r: &Results) -> String {
    let l = &r.labels;
    let mut s = String::from(
        "| classifier | parameters | seed | held-out accuracy | s |\n|---|---|---|---|---|\n",
    );
    for m in l.members.iter().chain([&r.comparison.classifier]) {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {:.0} |\n",
            m.name,
            m.parameters,
            m.seed,
            100.0 * m.heldout_accuracy,
            m.train_seconds
        ));
    }
    s.push_str(&labels::iou_table(&l.label_iou));
    s.push_str(&format!(
        "\nTraining images' labels (15 members): mean D9-vs-foreground IoU {:.2}.\n",
        100.0 * l.train_label_iou
    ));
    s.push_str("\n| run | seed | initial weights | iterations | final loss | mIoU | aAcc | mAcc | s |\n|---|---|---|---|---|---|---|---|---|\n");
    for x in r.comparison.pretrain.iter().chain(&r.comparison.finetune) {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            x.name,
            x.seed,
            x.init,
            x.iterations,
            x.final_loss,
            100.0 * x.eval.miou,
            100.0 * x.eval.aacc,
            100.0 * x.eval.macc,
            x.seconds
        ));
    }
    s.push_str("\n| arm | mIoU per seed | mean | std | min..max |\n|---|---|---|---|---|\n");
    for a in &r.comparison.summary {
        let per: Vec<String> = a.miou.iter().map(|v| format!("{:.2}", 100.0 * v)).collect();
        s.push_str(&format!(
            "| {} | {} | **{:.2}** | {:.2} | {:.2}..{:.2} |\n",
            a.name,
            per.join(", "),
            100.0 * a.mean,
            100.0 * a.std,
            100.0 * a.min,
            100.0 * a.max
        ));
    }
    s
}

fn parse(args: &[String]) -> Result<(Sizes, Dirs, Option<PathBuf>), String> {
    let root = crate::root();
    let mut sizes = Sizes::default();
    let mut dirs = Dirs {
        canvases: root.join("target/demo-data"),
        work: root.join("target/pssl-demo"),
    };
    let mut from_labels = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{a} needs a value; {USAGE}"))?;
        let num = || -> Result<usize, String> {
            v.parse()
                .map_err(|_| format!("{a} needs a number, got `{v}`; {USAGE}"))
        };
        match a.as_str() {
            "--size" => sizes.size = num()?,
            "--train" => sizes.train = num()?,
            "--pssl-train" => sizes.pssl_train = num()?,
            "--heldout" => sizes.heldout = num()?,
            "--epochs" => sizes.epochs = num()?,
            "--samples" => sizes.samples = num()?,
            "--pretrain-iters" => sizes.pretrain_iters = num()?,
            "--finetune-iters" => sizes.finetune_iters = num()?,
            "--val" => sizes.val = num()?,
            "--seeds" => sizes.seeds = num()?,
            "--from-labels" => from_labels = Some(PathBuf::from(v)),
            "--data" => dirs.canvases = PathBuf::from(v),
            "--work" => dirs.work = PathBuf::from(v),
            s => return Err(format!("unknown argument `{s}`; {USAGE}")),
        }
    }
    if sizes.train == 0 || sizes.heldout == 0 || sizes.seeds == 0 || sizes.size < 16 {
        return Err(format!(
            "--train, --heldout and --seeds must be > 0, --size >= 16; {USAGE}"
        ));
    }
    Ok((sizes, dirs, from_labels))
}

/// Runs `cargo xtask pssl-demo`.
pub fn run(args: &[String]) -> Result<(), String> {
    // The fine-tuning runs go in parallel, one per rayon thread: candle's element-wise ops stay
    // on each run's own thread (candle's pool serves one caller at a time).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let (sizes, dirs, from_labels) = parse(args)?;
    let t = Instant::now();
    let src = Path::new(demo::FASHION_MNIST_DIR);
    if !dirs.canvases.join("images/val").is_dir() || !dirs.canvases.join("images/train").is_dir() {
        eprintln!(
            "xtask: composing the demo canvases into {}",
            dirs.canvases.display()
        );
        demo::make_demo_data(src, &dirs.canvases, 4000, 500)
            .map_err(|e| format!("{e} (Fashion-MNIST: {})", demo::FASHION_MNIST_INSTALL))?;
    }
    let items = FashionMnist::load(src, "train")
        .map_err(|e| format!("{e} (Fashion-MNIST: {})", demo::FASHION_MNIST_INSTALL))?;
    let command = format!("cargo xtask pssl-demo {}", args.join(" "));
    let mut r = run_pipeline(
        &items,
        &sizes,
        &dirs,
        command.trim(),
        from_labels.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    r.seconds.push(("total".into(), t.elapsed().as_secs_f64()));
    let out = dirs.work.join("results.json");
    demo::write_json(&out, &r).map_err(|e| e.to_string())?;
    println!("{}", tables(&r));
    eprintln!(
        "xtask: wrote {} ({:.0} s in all)",
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
