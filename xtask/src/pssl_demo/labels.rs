//! PSSL labels of single-item images with `segkit::train::pssl`: each member's SmoothGrad
//! map (channel max), the consensus of a set of members, its deciles, and the D9 label scored
//! against the item's true foreground.
//!
//! Noise keys follow `segkit pssl generate`: image key `#` member index, so a member's map of
//! an image does not depend on the batch, the thread or the other members.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use segkit::models::classifier::{Classifier, ClassifierBackbone};
use segkit::train::pssl::consensus::{consensus, deciles};
use segkit::train::pssl::explain::reduce_channels;
use segkit::train::pssl::{ChannelReduce, Explainer, SmoothGrad};
use segkit::train::TrainResult;

use super::images::{iou, ItemSet};

/// Per-member SmoothGrad maps: `maps[member][image]` (`H x W`, row-major).
pub type Maps = Vec<Vec<Vec<f32>>>;

/// The `train` flag under which `m`'s logits are differentiable in its input.
///
/// segkit's Swin runs fused, non-differentiable CPU kernels in inference (`train = false`)
/// even when the input records gradients, so a Swin member is explained in training mode:
/// the demo's Swins have no dropout and no drop path (and Swin has no BatchNorm), so that is
/// the same function of the input. ResNets are explained in inference mode (running
/// BatchNorm statistics), as `segkit pssl generate` does.
pub fn differentiable_mode(m: &Classifier) -> bool {
    matches!(m.config().backbone, ClassifierBackbone::Swin(_))
}

/// The members' maps of images `range` of `set` for each image's own class, computed in
/// chunks of `chunk` images, chunks in parallel.
pub fn member_maps(
    models: &[&Classifier],
    sg: &SmoothGrad,
    set: &ItemSet,
    range: std::ops::Range<usize>,
    chunk: usize,
) -> TrainResult<Maps> {
    let dev = Device::Cpu;
    let starts: Vec<usize> = range.clone().step_by(chunk.max(1)).collect();
    let parts: Vec<Maps> = starts
        .par_iter()
        .map(|&s| {
            let e = (s + chunk.max(1)).min(range.end);
            let x = set.tensor(s..e, &dev)?;
            let targets: Vec<usize> = (s..e).map(|i| set.classes[i] as usize).collect();
            models
                .iter()
                .enumerate()
                .map(|(mi, m)| {
                    let keys: Vec<String> =
                        (s..e).map(|i| format!("{}#{mi}", set.key(i))).collect();
                    let xn = m.normalize(&x)?;
                    let train = differentiable_mode(m);
                    let f = |t: &Tensor| -> TrainResult<Tensor> { Ok(m.forward_t(t, train)?) };
                    let attr = sg.attribute(&f, &xn, &targets, &keys).map_err(|e| {
                        segkit::core::Error::InvalidConfig(format!(
                            "classifier `{}`: {e}",
                            m.config().name
                        ))
                    })?;
                    let r = reduce_channels(&attr, ChannelReduce::Max)?;
                    Ok(r.flatten_from(1)?.to_vec2::<f32>()?)
                })
                .collect::<TrainResult<Maps>>()
        })
        .collect::<TrainResult<_>>()?;
    let mut out: Maps = vec![Vec::with_capacity(range.len()); models.len()];
    for part in parts {
        for (m, maps) in part.into_iter().enumerate() {
            out[m].extend(maps);
        }
    }
    Ok(out)
}

/// The D9 mask of the consensus of `maps` (one per member, same image).
pub fn d9_mask(maps: &[Vec<f32>]) -> Vec<bool> {
    deciles(&consensus(maps)).iter().map(|d| *d == 9).collect()
}

/// The PSSL training label of image `i` of `set` from its members' maps: `1 + class` on D9,
/// background (0) on D0..D8 (no pixel is padded: each image is explained whole).
pub fn pssl_label(set: &ItemSet, i: usize, maps: &[Vec<f32>]) -> Vec<u8> {
    let c = 1 + set.classes[i] as u8;
    d9_mask(maps)
        .iter()
        .map(|f| if *f { c } else { 0 })
        .collect()
}

/// The share of `mask`'s pixels on the foreground `fg` (0 for an empty mask).
pub fn precision(mask: &[bool], fg: &[bool]) -> f64 {
    let on = mask.iter().filter(|m| **m).count();
    let hit = mask.iter().zip(fg).filter(|(m, f)| **m && **f).count();
    hit as f64 / on.max(1) as f64
}

/// Mean D9-vs-foreground IoU and mean D9 precision (share of D9 on the item) over the
/// images of `maps` (`maps[member][image]`, images `first..` of `set`) for the consensus of
/// `subset` (member indices).
pub fn subset_iou(set: &ItemSet, first: usize, maps: &Maps, subset: &[usize]) -> (f64, f64) {
    let n = maps.first().map_or(0, Vec::len);
    let scores: Vec<(f64, f64)> = (0..n)
        .into_par_iter()
        .map(|j| {
            let per: Vec<Vec<f32>> = subset.iter().map(|m| maps[*m][j].clone()).collect();
            let d9 = d9_mask(&per);
            let fg = set.fg(first + j);
            (iou(&d9, fg), precision(&d9, fg))
        })
        .collect();
    let k = n.max(1) as f64;
    (
        scores.iter().map(|s| s.0).sum::<f64>() / k,
        scores.iter().map(|s| s.1).sum::<f64>() / k,
    )
}

/// One row of the ensemble-size table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IouRow {
    /// What produced the label.
    pub method: String,
    /// Members per consensus (0 for the baselines).
    pub ensemble_size: usize,
    /// The member subsets averaged over (indices into the ensemble).
    pub subsets: Vec<Vec<usize>>,
    /// Mean IoU of each subset.
    pub subset_iou: Vec<f64>,
    /// Mean over the subsets.
    pub mean_iou: f64,
    /// Mean share of the D9 pixels that lie on the item (over subsets and images).
    pub precision: f64,
}

/// Disjoint subsets of `size` members, from a seeded permutation of `0..members`:
/// `members / size` of them (every member in at most one).
pub fn disjoint_subsets(members: usize, size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..members).collect();
    let mut s = seed;
    for i in (1..members).rev() {
        let r = segkit::core::random::splitmix64(&mut s);
        idx.swap(i, (r % (i as u64 + 1)) as usize);
    }
    idx.chunks_exact(size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// The ensemble-size rows for `sizes` (those up to the ensemble's size).
pub fn ensemble_rows(
    set: &ItemSet,
    first: usize,
    maps: &Maps,
    sizes: &[usize],
    seed: u64,
) -> Vec<IouRow> {
    sizes
        .iter()
        .filter(|k| **k >= 1 && **k <= maps.len())
        .map(|&k| {
            let subsets = disjoint_subsets(maps.len(), k, seed);
            let scores: Vec<(f64, f64)> = subsets
                .iter()
                .map(|s| subset_iou(set, first, maps, s))
                .collect();
            let g = scores.len().max(1) as f64;
            IouRow {
                method: format!("PSSL consensus of {k}"),
                ensemble_size: k,
                subsets,
                subset_iou: scores.iter().map(|s| s.0).collect(),
                mean_iou: scores.iter().map(|s| s.0).sum::<f64>() / g,
                precision: scores.iter().map(|s| s.1).sum::<f64>() / g,
            }
        })
        .collect()
}

/// Reference rows on images `range` of `set`: D9 of a seeded uniform random map (chance),
/// D9 of a centre prior (minus the distance to the image centre), and the best IoU any mask of
/// the D9 label's size could reach (`min(|D9|, |fg|) / max(|D9|, |fg|)`).
pub fn reference_rows(set: &ItemSet, range: std::ops::Range<usize>, seed: u64) -> Vec<IouRow> {
    let s = set.size;
    let centre: Vec<f32> = (0..s * s)
        .map(|p| {
            let (y, x) = ((p / s) as f32 + 0.5, (p % s) as f32 + 0.5);
            let h = s as f32 / 2.0;
            -((y - h).powi(2) + (x - h).powi(2)).sqrt()
        })
        .collect();
    let centre_d9: Vec<bool> = deciles(&centre).iter().map(|d| *d == 9).collect();
    let n9 = centre_d9.iter().filter(|f| **f).count();
    let rows: Vec<[f64; 6]> = range
        .clone()
        .into_par_iter()
        .map(|i| {
            let mut st = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let random: Vec<f32> = (0..s * s)
                .map(|_| (segkit::core::random::splitmix64(&mut st) >> 40) as f32)
                .collect();
            let rd9: Vec<bool> = deciles(&random).iter().map(|d| *d == 9).collect();
            let fg = set.fg(i);
            let nf = fg.iter().filter(|f| **f).count();
            let best = n9.min(nf) as f64 / n9.max(nf).max(1) as f64;
            [
                iou(&rd9, fg),
                iou(&centre_d9, fg),
                best,
                precision(&rd9, fg),
                precision(&centre_d9, fg),
                n9.min(nf) as f64 / n9.max(1) as f64,
            ]
        })
        .collect();
    let n = rows.len().max(1) as f64;
    let mean = |k: usize| rows.iter().map(|r| r[k]).sum::<f64>() / n;
    [
        "D9 of a random map (chance)",
        "D9 of a centre prior",
        "best mask of D9's size (bound)",
    ]
    .iter()
    .enumerate()
    .map(|(k, name)| IouRow {
        method: name.to_string(),
        ensemble_size: 0,
        subsets: Vec::new(),
        subset_iou: Vec::new(),
        mean_iou: mean(k),
        precision: mean(3 + k),
    })
    .collect()
}

/// The ensemble-size table as Markdown.
pub fn iou_table(rows: &[IouRow]) -> String {
    let mut s = String::from("\n| label | consensus size | subsets | IoU per subset | mean IoU | D9 on the item |\n|---|---|---|---|---|---|\n");
    for row in rows {
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
    s
}
