//! The three arms of the segmentation comparison with the demo PSPNet-R50, over seeds: PSSL
//! pre-training then fine-tuning, (a) fine-tuning from scratch, (b) fine-tuning from the
//! backbone of a separately trained ResNetV1c-50 classifier with the same body
//! ([`r50_classifier`]); per-arm mean and spread of the fine-tuned mIoU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rayon::prelude::*;
use segkit::models::classifier::{ClassifierBackbone, ClassifierConfig};
use segkit::train::{TrainError, TrainResult};

use super::ensemble::{self, Member, MemberRecord, TrainedMember};
use super::segment::{self, SegRun};

/// Name of the arm-(b) classifier.
pub const R50_CLASSIFIER: &str = "r50v1c_w16_classifier";
/// Seed of the arm-(b) classifier (initialisation and data order).
pub const R50_CLASSIFIER_SEED: u64 = 200;
/// The fine-tuning arms, in table order: (run name, initial weights).
pub const ARMS: [(&str, &str); 3] = [
    ("pssl", "PSSL pre-training of the same seed (all weights)"),
    ("scratch", "(a) random"),
    (
        "classifier_backbone",
        "(b) backbone of `r50v1c_w16_classifier`, heads random",
    ),
];

/// The arm-(b) classifier: [`segment::r50_body`] at output stride 32 (strides 1 / 2 / 2 / 2,
/// no dilation: how an ImageNet classifier trains the body that mmseg then dilates; the
/// weights are the same tensors) with a global pool and a 10-way fc, trained with the
/// ensemble's recipe (AdamW 3e-3, poly, the ensemble's epochs and batch).
pub fn r50_classifier() -> TrainResult<Member> {
    let body = segment::r50_body().with_output_stride(32)?;
    let mut cfg = ClassifierConfig::resnet(R50_CLASSIFIER, 50, 16, 10);
    cfg.backbone = ClassifierBackbone::ResNet(body);
    Ok(Member {
        cfg,
        seed: R50_CLASSIFIER_SEED,
        lr: 3e-3,
    })
}

/// The variables of a trained classifier by name.
pub fn classifier_vars(m: &TrainedMember) -> TrainResult<HashMap<String, Tensor>> {
    let vars = m.trained.varmap.data().lock().map_err(|_| {
        segkit::core::Error::InvalidConfig("classifier variables: poisoned lock".into())
    })?;
    Ok(vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// One job of the comparison.
enum Job {
    Classifier,
    Pretrain(u64),
}

/// What the first parallel step produces.
enum Done {
    Classifier(Box<TrainedMember>),
    Pretrain(Box<SegRun>),
}

/// Everything the comparison records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    /// The arm-(b) classifier.
    pub classifier: MemberRecord,
    /// The PSSL pre-training of each seed (scored on the held-out single items' true labels).
    pub pretrain: Vec<SegRun>,
    /// The fine-tuning runs, seed-major, arms in [`ARMS`] order.
    pub finetune: Vec<SegRun>,
    /// Per arm: mean and spread of the fine-tuned mIoU over the seeds.
    pub summary: Vec<ArmSummary>,
}

/// Mean and spread of one arm over its seeds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArmSummary {
    /// The arm's run name.
    pub name: String,
    /// mIoU of each seed, in seed order.
    pub miou: Vec<f64>,
    /// Mean mIoU.
    pub mean: f64,
    /// Sample standard deviation (n - 1; 0 for one seed).
    pub std: f64,
    /// Lowest and highest mIoU.
    pub min: f64,
    /// Highest mIoU.
    pub max: f64,
}

/// Mean, sample standard deviation, min and max of `v` (named `name`).
pub fn summarise(name: &str, v: &[f64]) -> ArmSummary {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    ArmSummary {
        name: name.into(),
        miou: v.to_vec(),
        mean,
        std: var.sqrt(),
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Inputs of the comparison.
pub struct Setup<'a> {
    /// Training images of the classifier (`n x 3 x size x size`) and their classes.
    pub train: (&'a Tensor, &'a [u32]),
    /// Held-out images and classes (the classifier's accuracy).
    pub heldout: (&'a Tensor, &'a [u32]),
    /// The PSSL dataset (`custom` layout: PSSL-labelled train, truly labelled val).
    pub pssl_data: &'a Path,
    /// The demo canvases.
    pub canvases: &'a Path,
    /// Where the runs go (`runs/`, `init/`).
    pub work: &'a Path,
}

/// Classifier epochs, batch; pre-training and fine-tuning iterations; held-out images and
/// validation canvases scored; seeds `0..seeds`.
pub struct Budget {
    /// Classifier epochs.
    pub epochs: usize,
    /// Classifier batch.
    pub batch: usize,
    /// PSSL pre-training iterations.
    pub pretrain_iters: usize,
    /// Fine-tuning iterations of every run.
    pub finetune_iters: usize,
    /// Held-out single-item images scored after pre-training.
    pub heldout: usize,
    /// Validation canvases scored after fine-tuning.
    pub val: usize,
    /// Seeds per arm.
    pub seeds: usize,
}

/// Runs the comparison: the classifier and the pre-trainings (as many at a time as rayon
/// has threads), then every fine-tuning run (seed-major).
pub fn compare(s: &Setup<'_>, b: &Budget) -> TrainResult<Comparison> {
    let runs = s.work.join("runs");
    let jobs: Vec<Job> = std::iter::once(Job::Classifier)
        .chain((0..b.seeds as u64).map(Job::Pretrain))
        .collect();
    let member = r50_classifier()?;
    let done: Vec<Done> = jobs
        .par_iter()
        .map(|j| match j {
            Job::Classifier => {
                let m = std::slice::from_ref(&member);
                let mut t =
                    ensemble::train_members(m, s.train.0, s.train.1, s.heldout, b.epochs, b.batch)?;
                Ok(Done::Classifier(Box::new(t.remove(0))))
            }
            Job::Pretrain(seed) => segment::pretrain(
                s.pssl_data,
                &runs.join(format!("pssl_pretrain_s{seed}")),
                b.pretrain_iters,
                b.heldout,
                *seed,
            )
            .map(|r| Done::Pretrain(Box::new(r))),
        })
        .collect::<TrainResult<_>>()?;
    let (mut classifier, mut pretrain) = (None, Vec::new());
    for d in done {
        match d {
            Done::Classifier(c) => classifier = Some(c),
            Done::Pretrain(r) => pretrain.push(*r),
        }
    }
    let classifier = classifier.ok_or_else(|| TrainError::Io {
        path: runs.clone(),
        reason: "the classifier job produced nothing".into(),
    })?;
    let vars = classifier_vars(&classifier)?;
    let mut inits = Vec::new();
    for seed in 0..b.seeds as u64 {
        let path = s
            .work
            .join(format!("init/backbone_from_classifier_s{seed}.safetensors"));
        let scratch = runs.join(format!("init_scratch_s{seed}"));
        segment::backbone_init(s.canvases, &scratch, &vars, &path, seed)?;
        inits.push(path);
    }
    drop(vars);
    let ft: Vec<(u64, usize, Option<PathBuf>)> = (0..b.seeds as u64)
        .flat_map(|seed| {
            let i = seed as usize;
            [
                (seed, 0, Some(pretrain[i].model_path.clone())),
                (seed, 1, None),
                (seed, 2, Some(inits[i].clone())),
            ]
        })
        .collect();
    let finetune: Vec<SegRun> = ft
        .par_iter()
        .map(|(seed, arm, from)| {
            let (name, init) = ARMS[*arm];
            let init = format!("{init} (seed {seed})");
            let out = runs.join(format!("ft_{name}_s{seed}"));
            segment::finetune(
                name,
                &init,
                s.canvases,
                &out,
                b.finetune_iters,
                b.val,
                from.clone(),
                *seed,
            )
        })
        .collect::<TrainResult<_>>()?;
    let summary = ARMS
        .iter()
        .map(|(name, _)| {
            let v: Vec<f64> = finetune
                .iter()
                .filter(|r| r.name == *name)
                .map(|r| r.eval.miou)
                .collect();
            summarise(name, &v)
        })
        .collect();
    Ok(Comparison {
        classifier: classifier.record,
        pretrain,
        finetune,
        summary,
    })
}
