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
//! 4. The demo PSPNet ([`segment`]) pre-trained on those labels (weighted CE, 0.1
//!    background), then fine-tuned on the demo canvases, against (a) from scratch and (b)
//!    the backbone of the ensemble member with the demo model's backbone; same fine-tuning
//!    budget; held-out mIoU of each.
//!
//! `pssl-demo [--size N] [--train N] [--pssl-train N] [--heldout N] [--epochs N] [--samples N]
//! [--pretrain-iters N] [--finetune-iters N] [--val N] [--data DIR] [--work DIR]`; results in
//! `WORK/results.json` (default `target/pssl-demo`), tables printed as Markdown.

pub mod ensemble;
pub mod images;
pub mod labels;
pub mod segment;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use segkit::train::pssl::{NoiseLevel, SmoothGrad};
use segkit::train::TrainResult;

use crate::demo_data::{self as demo, FashionMnist};
use ensemble::{MemberRecord, TrainedMember, DEMO_BACKBONE_MEMBER};
use images::ItemSet;
use labels::IouRow;
use segment::SegRun;

/// Seed of the single-item images.
pub const ITEM_SEED: u64 = 20_261_205;
/// Seed of the member subsets and of the chance baseline.
pub const SUBSET_SEED: u64 = 13;

const USAGE: &str = "usage: cargo xtask pssl-demo [--size N] [--train N] [--pssl-train N] \
                     [--heldout N] [--epochs N] [--samples N] [--pretrain-iters N] [--finetune-iters N] \
                     [--val N] [--data DIR] [--work DIR]";

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
            pretrain_iters: 1200,
            finetune_iters: 800,
            val: 300,
        }
    }
}

/// Everything a run records (`results.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Results {
    /// The command's arguments.
    pub command: String,
    /// Sizes.
    pub sizes: Sizes,
    /// Seeds: images, subsets (members have their own, see `members`).
    pub item_seed: u64,
    /// Seed of the subsets and chance maps.
    pub subset_seed: u64,
    /// The ensemble.
    pub members: Vec<MemberRecord>,
    /// D9-vs-foreground IoU on the held-out images by consensus size, then the references.
    pub label_iou: Vec<IouRow>,
    /// D9-vs-foreground IoU of the training images' labels (all members).
    pub train_label_iou: f64,
    /// PSSL pre-training (evaluated on the held-out single-item images' true labels).
    pub pretrain: SegRun,
    /// The fine-tuning runs: PSSL, (a) scratch, (b) backbone-only classification.
    pub finetune: Vec<SegRun>,
    /// Seconds per stage.
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

/// The variables of a trained member by name.
fn member_vars(m: &TrainedMember) -> TrainResult<HashMap<String, candle_core::Tensor>> {
    let vars = m.trained.varmap.data().lock().map_err(|_| {
        segkit::core::Error::InvalidConfig("classifier variables: poisoned lock".into())
    })?;
    Ok(vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// The three fine-tuning runs on the canvases: from the PSSL pre-training's weights at
/// `pretrained`, (a) from scratch, (b) from the demo-backbone member's backbone.
fn finetune_runs(
    trained: &[TrainedMember],
    sizes: &Sizes,
    dirs: &Dirs,
    pretrained: &Path,
) -> TrainResult<Vec<SegRun>> {
    let runs = dirs.work.join("runs");
    let demo_member = trained
        .iter()
        .find(|m| m.record.name == DEMO_BACKBONE_MEMBER)
        .ok_or_else(|| segkit::core::Error::InvalidConfig("no demo-backbone member".into()))?;
    let init_b = dirs.work.join("init/backbone_from_classifier.safetensors");
    segment::backbone_init(
        &dirs.canvases,
        &runs.join("init_scratch"),
        &member_vars(demo_member)?,
        &init_b,
    )?;
    let (it, val, c) = (sizes.finetune_iters, sizes.val, &dirs.canvases);
    Ok(vec![
        segment::finetune(
            "pssl",
            "PSSL pre-training",
            c,
            &runs.join("ft_pssl"),
            it,
            val,
            Some(pretrained.to_path_buf()),
        )?,
        segment::finetune(
            "scratch",
            "(a) random (seed 0)",
            c,
            &runs.join("ft_scratch"),
            it,
            val,
            None,
        )?,
        segment::finetune(
            "classifier_backbone",
            &format!("(b) backbone of classifier `{DEMO_BACKBONE_MEMBER}`"),
            c,
            &runs.join("ft_classifier_backbone"),
            it,
            val,
            Some(init_b),
        )?,
    ])
}

/// The whole pipeline on `items` (Fashion-MNIST's training split or a stand-in).
pub fn run_pipeline(
    items: &FashionMnist,
    sizes: &Sizes,
    dirs: &Dirs,
    command: &str,
) -> TrainResult<Results> {
    let dev = Device::Cpu;
    let mut seconds = Vec::new();
    let t = Instant::now();
    let (n, h) = (sizes.train, sizes.heldout);
    let train = ItemSet::make(items, ITEM_SEED, 0..n, sizes.size)?;
    let held = ItemSet::make(items, ITEM_SEED, n..n + h, sizes.size)?;
    stage(&mut seconds, "images", t);

    let t = Instant::now();
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
    let maps = labels::member_maps(&models, &sg, &held, 0..h, sizes.chunk)?;
    let mut label_iou = labels::ensemble_rows(&held, 0, &maps, &[1, 3, 5, 15], SUBSET_SEED);
    label_iou.extend(labels::reference_rows(&held, 0..h, SUBSET_SEED));
    drop(maps);
    stage(&mut seconds, "held-out labels", t);

    let t = Instant::now();
    let pssl_set = ItemSet::make(items, ITEM_SEED, 0..sizes.pssl_train.min(n), sizes.size)?;
    let (train_labels, train_label_iou) = training_labels(&trained, &sg, &pssl_set, sizes.chunk)?;
    let pssl_data = dirs.work.join("pssl-data");
    if pssl_data.exists() {
        std::fs::remove_dir_all(&pssl_data).map_err(|e| segkit::train::TrainError::Io {
            path: pssl_data.clone(),
            reason: e.to_string(),
        })?;
    }
    images::write_split(&pssl_data, "train", &pssl_set, &train_labels)?;
    let truth: Vec<Vec<u8>> = (0..h).map(|i| images::true_label(&held, i)).collect();
    images::write_split(&pssl_data, "val", &held, &truth)?;
    stage(&mut seconds, "training labels", t);

    let t = Instant::now();
    let runs = dirs.work.join("runs");
    let pretrain = segment::pretrain(
        &pssl_data,
        &runs.join("pssl_pretrain"),
        sizes.pretrain_iters,
        h,
    )?;
    stage(&mut seconds, "PSSL pre-training", t);

    let t = Instant::now();
    let finetune = finetune_runs(&trained, sizes, dirs, &pretrain.model_path)?;
    stage(&mut seconds, "fine-tuning", t);
    Ok(Results {
        command: command.to_string(),
        sizes: sizes.clone(),
        item_seed: ITEM_SEED,
        subset_seed: SUBSET_SEED,
        members: trained.into_iter().map(|m| m.record).collect(),
        label_iou,
        train_label_iou,
        pretrain,
        finetune,
        seconds,
    })
}

/// The results as Markdown tables.
pub fn tables(r: &Results) -> String {
    let mut s = String::from(
        "| classifier | parameters | seed | held-out accuracy | s |\n|---|---|---|---|---|\n",
    );
    for m in &r.members {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {:.0} |\n",
            m.name,
            m.parameters,
            m.seed,
            100.0 * m.heldout_accuracy,
            m.train_seconds
        ));
    }
    s.push_str("\n| label | consensus size | subsets | IoU per subset | mean IoU | D9 on the item |\n|---|---|---|---|---|---|\n");
    for row in &r.label_iou {
        let per: Vec<String> = row
            .subset_iou
            .iter()
            .map(|v| format!("{:.1}", 100.0 * v))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | **{:.2}** | {:.2} |\n",
            row.method,
            if row.ensemble_size == 0 {
                "-".to_string()
            } else {
                row.ensemble_size.to_string()
            },
            row.subsets.len(),
            if per.is_empty() {
                "-".into()
            } else {
                per.join(", ")
            },
            100.0 * row.mean_iou,
            100.0 * row.precision
        ));
    }
    s.push_str(&format!(
        "\nTraining images' labels (15 members): mean D9-vs-foreground IoU {:.2}.\n",
        100.0 * r.train_label_iou
    ));
    s.push_str("\n| run | initial weights | iterations | final loss | mIoU | aAcc | mAcc | s |\n|---|---|---|---|---|---|---|---|\n");
    for x in std::iter::once(&r.pretrain).chain(&r.finetune) {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            x.name,
            x.init,
            x.iterations,
            x.final_loss,
            100.0 * x.eval.miou,
            100.0 * x.eval.aacc,
            100.0 * x.eval.macc,
            x.seconds
        ));
    }
    s
}

fn parse(args: &[String]) -> Result<(Sizes, Dirs), String> {
    let root = crate::root();
    let mut sizes = Sizes::default();
    let mut dirs = Dirs {
        canvases: root.join("target/demo-data"),
        work: root.join("target/pssl-demo"),
    };
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
            "--data" => dirs.canvases = PathBuf::from(v),
            "--work" => dirs.work = PathBuf::from(v),
            s => return Err(format!("unknown argument `{s}`; {USAGE}")),
        }
    }
    if sizes.train == 0 || sizes.heldout == 0 || sizes.size < 16 {
        return Err(format!(
            "--train and --heldout must be > 0, --size >= 16; {USAGE}"
        ));
    }
    Ok((sizes, dirs))
}

/// Runs `cargo xtask pssl-demo`.
pub fn run(args: &[String]) -> Result<(), String> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let (sizes, dirs) = parse(args)?;
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
    let mut r = run_pipeline(&items, &sizes, &dirs, command.trim()).map_err(|e| e.to_string())?;
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
