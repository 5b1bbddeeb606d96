//! Training-step cases of `segkit bench`: one SGD step (forward with batch statistics, every
//! configured loss, backward, SGD with momentum and weight decay, as mmseg trains) on synthetic
//! weights and a synthetic batch: of an ADE20K preset at `--size` x `--size`, batch `--batch`;
//! of the Cityscapes PSPNet preset at `--size` x 2`--size` (the defaults give the paper's
//! 512x1024, batch 2); of segkit's demo model at its training shape, 8x3x128x128.
//!
//! Besides the median step time it reports the peak resident memory of each phase: the
//! counter is reset (`/proc/self/clear_refs`) before the forward pass (model, input and
//! losses), the backward pass and the optimizer step, and read after each, so `fwd_peak_mb` is
//! the highest RSS while the graph is built, `bwd_peak_mb` while the gradients are computed
//! (the graph still alive), `opt_peak_mb` while the weights are updated (graph dropped, the
//! gradients of the parameters alive). `tests/parity/bench_torch_train.py` is the mmseg side.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use segkit::train::config::OptimizerConfig;
use segkit::train::{LossPlan, Optimizer};
use segkit_core::testing::{synthetic_input, synthetic_tensor};

use super::{reset_peak_rss, status_mb};
use crate::CliError;

/// The training cases: `train_` + an ADE20K preset's model.
pub const CASES: &[(&str, &str)] = &[
    (
        "train_pspnet_r50-d8",
        "PSPNet R50-D8 (ADE20K preset) SGD training step, --batch x 3 x --size x --size",
    ),
    (
        "train_danet_r50-d8",
        "DANet R50-D8 (ADE20K preset) SGD training step, --batch x 3 x --size x --size",
    ),
    (
        "train_pspnet_r50-d8_cityscapes",
        "PSPNet R50-D8 (Cityscapes preset) SGD training step, --batch x 3 x --size x 2--size",
    ),
    (
        "train_fastfcn_r50-d32_jpu_psp",
        "FastFCN R50-D32 JPU + PSP (ADE20K preset) SGD training step, --batch x 3 x --size x --size",
    ),
    (
        "train_demo_b8",
        "segkit's demo model (ResNetV1c-18 w16 + PSP) SGD training step, 8x3x128x128 (fixed)",
    ),
    super::train_oneformer::CASE,
];

/// A training case's model config, class count and batch shape `(batch, height, width)` from
/// `--size` and `--batch`.
fn case_spec(
    case: &str,
    size: usize,
    batch: usize,
) -> Result<(segkit::SegmentorConfig, usize, [usize; 3]), CliError> {
    let (cfg, shape) = match case {
        "train_demo_b8" => (segkit::encoder_decoder::demo::demo_config(), [8, 128, 128]),
        "train_pspnet_r50-d8_cityscapes" => (
            segkit::SegmentorConfig::preset("pspnet_r50-d8_cityscapes-512x1024").map_err(usage)?,
            [batch, size, 2 * size],
        ),
        c => {
            let preset = format!("{}_ade20k-512x512", c.trim_start_matches("train_"));
            (
                segkit::SegmentorConfig::preset(&preset).map_err(usage)?,
                [batch, size, size],
            )
        }
    };
    let k = cfg.meta.classes.len();
    Ok((cfg, k, shape))
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Everything one step needs, built once.
struct Step {
    model: segkit::EncoderDecoder,
    losses: LossPlan,
    params: BTreeMap<String, Var>,
    opt: Optimizer,
    x: Tensor,
    labels: Tensor,
}

/// Peaks (MB) and times (ms) of one step's phases, and its total loss.
#[derive(Default, Clone, Copy)]
pub(super) struct Phases {
    pub(super) fwd_mb: f64,
    pub(super) bwd_mb: f64,
    pub(super) opt_mb: f64,
    pub(super) fwd_ms: f64,
    pub(super) bwd_ms: f64,
    pub(super) opt_ms: f64,
    pub(super) loss: f64,
}

fn build(cfg: &segkit::SegmentorConfig, k: usize, shape: [usize; 3]) -> Result<Step, CliError> {
    let dev = Device::Cpu;
    let [batch, h, w] = shape;
    let varmap = VarMap::new();
    let model =
        segkit::EncoderDecoder::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))
            .map_err(usage)?;
    let all: BTreeMap<String, Var> = varmap
        .data()
        .lock()
        .map_err(|_| usage("poisoned VarMap lock"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Synthetic weights (the values tests/parity/synth.py gives mmseg's model).
    for (k, v) in &all {
        v.set(&synthetic_tensor(k, v.shape(), DType::F32, &dev)?)?;
    }
    let params = all
        .into_iter()
        .filter(|(k, _)| !(k.ends_with(".running_mean") || k.ends_with(".running_var")))
        .collect();
    let losses = LossPlan::new(cfg, None).map_err(usage)?;
    let x = synthetic_input("input", (batch, 3, h, w), &dev)?;
    // Labels 0..k-1 and ~1/(k+2) ignored (255), drawn from the U(-2, 2) stream `labels`
    // exactly as mmseg's side draws them (k = 150: floor((u + 2) * 38), 150 -> 255).
    let u = synthetic_input("labels", (batch, h, w), &dev)?;
    let kf = k as f64;
    let labels = ((u + 2.0)? * ((kf + 2.0) / 4.0))?.floor()?.clamp(0.0, kf)?;
    let ignore = labels.eq(kf)?;
    let labels = ignore.where_cond(&labels.ones_like()?.affine(0.0, 255.0)?, &labels)?;
    let labels = labels.to_dtype(DType::U32)?;
    let opt = Optimizer::new(&OptimizerConfig::Sgd {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    });
    Ok(Step {
        model,
        losses,
        params,
        opt,
        x,
        labels,
    })
}

/// Resets the peak-RSS counter and starts a phase's clock.
pub(super) fn mark() -> Instant {
    reset_peak_rss();
    Instant::now()
}

/// Milliseconds since `t`.
pub(super) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// One step, phase by phase.
fn step(s: &mut Step) -> Result<Phases, CliError> {
    let mut p = Phases::default();
    let t = mark();
    let out = s.model.forward_t(&s.x, true).map_err(usage)?;
    let loss = s.losses.compute(&out, &s.labels, 255).map_err(usage)?.total;
    drop(out);
    let _ = loss.to_scalar::<f32>()?;
    p.fwd_ms = ms(t);
    p.fwd_mb = status_mb("VmHWM:");
    if std::env::var_os("SEGKIT_BENCH_GRAPH").is_some() {
        graph_census(&loss);
    }
    let t = mark();
    let g = loss.backward()?;
    let grads: HashMap<String, Tensor> = s
        .params
        .iter()
        .filter_map(|(n, v)| g.get(v.as_tensor()).map(|t| (n.clone(), t.clone())))
        .collect();
    drop(g);
    drop(loss);
    p.bwd_ms = ms(t);
    p.bwd_mb = status_mb("VmHWM:");
    let t = mark();
    s.opt.step(&s.params, &grads, 0.01).map_err(usage)?;
    drop(grads);
    p.opt_ms = ms(t);
    p.opt_mb = status_mb("VmHWM:");
    Ok(p)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs a training case and prints its JSON line.
pub fn run(
    case: &str,
    size: usize,
    batch: usize,
    runs: usize,
    warmup: usize,
    pool: &str,
) -> Result<(), CliError> {
    if case == super::train_oneformer::CASE.0 {
        return super::train_oneformer::run(size, batch, runs, warmup, pool);
    }
    let (cfg, k, shape) = case_spec(case, size, batch)?;
    let mut s = build(&cfg, k, shape)?;
    let rss_before = status_mb("VmRSS:");
    // As `Trainer::step` runs a step: on a worker of rayon's pool.
    let one = |s: &mut Step| segkit_core::runtime::on_pool(|| step(s));
    for _ in 0..warmup {
        one(&mut s)?;
    }
    let mut all = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        all.push(one(&mut s)?);
    }
    print_report(case, shape, &all, rss_before, pool, "");
    Ok(())
}

/// Prints a training case's JSON line: the median step time and per-phase medians, the
/// phases' peak RSS and what the steps add above `rss_before`; `extra` (`, "key": value`..)
/// goes before `candle_pool`.
pub(super) fn print_report(
    case: &str,
    [batch, height, width]: [usize; 3],
    all: &[Phases],
    rss_before: f64,
    pool: &str,
    extra: &str,
) {
    let max = |f: fn(&Phases) -> f64| all.iter().map(f).fold(f64::NAN, f64::max);
    let med = |f: fn(&Phases) -> f64| median(all.iter().map(f).collect());
    let total: Vec<f64> = all.iter().map(|p| p.fwd_ms + p.bwd_ms + p.opt_ms).collect();
    let peak = max(|p| p.fwd_mb)
        .max(max(|p| p.bwd_mb))
        .max(max(|p| p.opt_mb));
    println!(
        "{{\"impl\": \"segkit\", \"case\": \"{case}\", \"height\": {height}, \"width\": {width}, \"batch\": {batch}, \"median_ms\": {:.3}, \"runs\": {}, \"fwd_ms\": {:.1}, \"bwd_ms\": {:.1}, \"opt_ms\": {:.1}, \"peak_rss_mb\": {peak:.1}, \"fwd_peak_mb\": {:.1}, \"bwd_peak_mb\": {:.1}, \"opt_peak_mb\": {:.1}, \"rss_before_mb\": {rss_before:.1}, \"forward_mb\": {:.1}{extra}, \"candle_pool\": \"{pool}\"}}",
        median(total),
        all.len(),
        med(|p| p.fwd_ms),
        med(|p| p.bwd_ms),
        med(|p| p.opt_ms),
        max(|p| p.fwd_mb),
        max(|p| p.bwd_mb),
        max(|p| p.opt_mb),
        peak - rss_before,
    );
}

/// Prints the tensors the autograd graph of `loss` keeps alive, grouped by shape (storage
/// shared by views counted once): what the backward pass holds on to. With
/// `SEGKIT_BENCH_GRAPH=nodes` every node counts, views included: what candle's backward pass
/// zero-fills and adds once per incoming gradient.
pub(super) fn graph_census(loss: &Tensor) {
    let every_node = std::env::var("SEGKIT_BENCH_GRAPH").is_ok_and(|v| v == "nodes");
    let mut seen = std::collections::HashSet::new();
    let mut nodes = 0usize;
    let mut by_shape: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut total = 0f64;
    for t in loss.sorted_nodes() {
        let (s, _) = t.storage_and_layout();
        let key = &*s as *const candle_core::Storage as usize;
        if !seen.insert(key) && !every_node {
            continue;
        }
        nodes += 1;
        let mb = (t.elem_count() * t.dtype().size_in_bytes()) as f64 / 1048576.0;
        let e = by_shape.entry(format!("{:?}", t.dims())).or_default();
        e.0 += 1;
        e.1 += mb;
        total += mb;
    }
    let mut v: Vec<_> = by_shape.into_iter().collect();
    v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let what = if every_node { "nodes" } else { "storages" };
    eprintln!("graph: {nodes} {what}, {total:.1} MB");
    for (shape, (n, mb)) in v.iter().take(25) {
        eprintln!("  {shape:<24} x{n:<4} {mb:8.1} MB");
    }
}
