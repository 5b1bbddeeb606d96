//! Parity of segkit-heads' `RpnHead` (Detectron's FPN RPN, PANet's test-time settings)
//! (fixture: tests/parity/gen_panet_rpn.py).
//!
//! Oracle: WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet `FPN.py::fpn_rpn_outputs`,
//! `generate_proposals.py`, `collect_and_distribute_fpn_rpn_proposals.py`): a PyTorch head with
//! the official key names and numpy proposal generation in float32; not an installable
//! package. The generator cross-checks every level's NMS against torchvision's `nms` on
//! `+1`-adjusted boxes (independent).
//!
//! Full size: 256-channel synthetic N2..N6 for a 517x389 image padded to 544x416, synthetic
//! weights. The head outputs are compared element-wise (sampled summaries); the proposals
//! (per level after NMS, the 1000 collected, their RoI levels) as sets: every reference
//! proposal must have a segkit proposal with the same box (within 1e-4 * max(1, |coordinate|))
//! and score (within 1e-5), and vice versa, except where a score lies within 1e-5 of the
//! selection's cut (a near-tie the reference itself orders arbitrarily).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use segkit_core::ops::detection::Box4;
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_core::FeatureSpec;
use segkit_heads::{RpnConfig, RpnHead};
use segkit_tests::{assert_sampled_close, get, load_fixture};

const SIZES: [(usize, usize); 5] = [(136, 104), (68, 52), (34, 26), (17, 13), (9, 7)];

fn vals(f: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    get(f, k).flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn close_box(a: &Box4, b: &Box4) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0))
}

/// Matches proposals as sets (see the file docs); returns (matched, unmatched near the cut).
fn match_sets(what: &str, got: (&[Box4], &[f32]), want: (&[Box4], &[f32])) -> (usize, usize) {
    let cut = want.1.iter().copied().fold(f32::INFINITY, f32::min);
    let mut used = vec![false; got.0.len()];
    let (mut matched, mut near_cut, mut worst) = (0, 0, 0f32);
    for (wb, &ws) in want.0.iter().zip(want.1) {
        let hit = (0..got.0.len())
            .find(|&j| !used[j] && (got.1[j] - ws).abs() <= 1e-5 && close_box(&got.0[j], wb));
        match hit {
            Some(j) => {
                used[j] = true;
                matched += 1;
                let d = got.0[j].iter().zip(wb).map(|(a, b)| (a - b).abs());
                worst = d.fold(worst, f32::max).max((got.1[j] - ws).abs());
            }
            None if (ws - cut).abs() <= 1e-5 => near_cut += 1,
            None => panic!("{what}: reference proposal {wb:?} (score {ws}) has no match"),
        }
    }
    for (j, u) in used.iter().enumerate() {
        if !u {
            assert!(
                (got.1[j] - cut).abs() <= 1e-5,
                "{what}: segkit proposal {:?} (score {}) is not in the reference",
                got.0[j],
                got.1[j]
            );
            near_cut += 1;
        }
    }
    eprintln!(
        "{what}: {matched} matched (max |diff| of box / score {worst:e}), {near_cut} unmatched \
         at the cut (score {cut})"
    );
    (matched, near_cut)
}

fn boxes(v: &[f32]) -> Vec<Box4> {
    v.chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

#[test]
fn rpn_head_and_proposals() {
    let f = load_fixture("panet/rpn.safetensors");
    let dev = Device::Cpu;
    let specs: Vec<FeatureSpec> = (2..=6).map(|l| FeatureSpec::new(256, 1 << l)).collect();
    let vb = synthetic_var_builder(DType::F32, &dev).pp("RPN");
    let rpn = RpnHead::new(&RpnConfig::detectron_test(), &specs, vb).expect("build");
    let xs: Vec<Tensor> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            synthetic_input(&format!("rpn.n{}", i + 2), (1, 256, h, w), &dev).unwrap()
        })
        .collect();
    let out = rpn.forward_t(&xs, false).expect("head");
    for l in 0..5 {
        assert_sampled_close(&format!("cls{}", l + 2), &out.cls_logits[l], &f);
        assert_sampled_close(&format!("bbox{}", l + 2), &out.bbox_pred[l], &f);
    }
    let p = rpn
        .proposals(&out, 0, [517.0, 389.0, 1.0])
        .expect("proposals");
    let mut unmatched = 0;
    for l in 0..5 {
        let wb = boxes(&vals(&f, &format!("level{}.boxes", l + 2)));
        let ws = vals(&f, &format!("level{}.scores", l + 2));
        let what = format!("level {} proposals", l + 2);
        unmatched += match_sets(&what, (&p.level_boxes[l], &p.level_scores[l]), (&wb, &ws)).1;
    }
    let wb = boxes(&vals(&f, "rois"));
    let ws = vals(&f, "roi_scores");
    unmatched += match_sets("collected", (&p.boxes, &p.scores), (&wb, &ws)).1;
    assert!(unmatched <= 2, "{unmatched} proposals differ at a cut");
    // RoI levels of the collected proposals: equal counts per level, and equal restore order
    // when the collected lists agree element by element.
    let want_lv: Vec<i64> = get(&f, "roi_levels").to_vec1::<i64>().unwrap();
    let counts = |lv: &[usize]| {
        (2..=5)
            .map(|l| lv.iter().filter(|&&v| v == l).count())
            .collect::<Vec<_>>()
    };
    let got_counts: Vec<usize> = p.levels.per_level.iter().map(Vec::len).collect();
    let want_lv: Vec<usize> = want_lv.iter().map(|&v| v as usize).collect();
    assert_eq!(got_counts, counts(&want_lv), "proposals per RoI level");
    if p.boxes.len() == wb.len() && p.boxes.iter().zip(&wb).all(|(a, b)| close_box(a, b)) {
        let restore: Vec<usize> = get(&f, "restore")
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(p.levels.restore, restore, "rois_idx_restore");
    }
}
