//! The PSSL demo's pieces at toy size, on synthetic stand-ins for Fashion-MNIST items (so
//! that the tests need no installed data): deterministic images, disjoint member subsets,
//! explanations independent of chunking, labels as the deciles define them, and the whole
//! pipeline (15 classifiers, labels, pre-training, three fine-tuning runs) end to end.

use candle_core::Device;
use segkit::train::pssl::consensus::deciles;
use segkit::train::pssl::{NoiseLevel, SmoothGrad};

use super::*;
use crate::demo_data::FashionMnist;

/// `n` synthetic 28 x 28 items: label `i % 10`, a bright ellipse whose proportions depend on
/// the label, on black.
fn toy_items(n: usize) -> FashionMnist {
    let mut images = Vec::with_capacity(n * 784);
    for i in 0..n {
        let l = (i % 10) as f64;
        let (rx, ry) = (4.0 + l, 13.0 - 0.8 * l);
        for y in 0..28 {
            for x in 0..28 {
                let (dx, dy) = ((x as f64 - 13.5) / rx, (y as f64 - 13.5) / ry);
                let v = if dx * dx + dy * dy <= 1.0 {
                    120 + (i * 37 % 130) as u8
                } else {
                    0
                };
                images.push(v);
            }
        }
    }
    FashionMnist {
        images,
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

#[test]
fn item_images_are_deterministic_and_keep_their_foreground() {
    let items = toy_items(12);
    let a = ItemSet::make(&items, 5, 2..10, 32).unwrap();
    let b = ItemSet::make(&items, 5, 2..10, 32).unwrap();
    assert_eq!(a.pixels, b.pixels);
    assert_eq!(a.foreground, b.foreground);
    assert_eq!(
        a.classes,
        (2..10).map(|i| (i % 10) as u32).collect::<Vec<_>>()
    );
    let c = ItemSet::make(&items, 6, 2..10, 32).unwrap();
    assert_ne!(a.pixels, c.pixels, "another seed draws other backgrounds");
    for i in 0..a.len() {
        let fg = a.fg(i).iter().filter(|f| **f).count();
        // The ellipse covers at least a sixth of its 14..28 px square.
        assert!(
            fg > 14 * 14 / 6 && fg < 32 * 32,
            "image {i}: {fg} foreground pixels"
        );
        let t = images::true_label(&a, i);
        for (p, f) in t.iter().zip(a.fg(i)) {
            assert_eq!(*p, if *f { 1 + a.classes[i] as u8 } else { 0 });
        }
    }
    assert!(ItemSet::make(&items, 5, 10..13, 32).is_err());
    assert_eq!(
        images::iou(&[true, true, false], &[true, false, false]),
        0.5
    );
    assert_eq!(images::iou(&[false], &[false]), 1.0);
}

#[test]
fn member_subsets_are_disjoint() {
    for (k, groups) in [(1, 15), (3, 5), (5, 3), (15, 1)] {
        let s = labels::disjoint_subsets(15, k, SUBSET_SEED);
        assert_eq!(s.len(), groups);
        let mut all: Vec<usize> = s.concat();
        assert!(s.iter().all(|g| g.len() == k));
        all.sort();
        assert_eq!(all, (0..15).collect::<Vec<_>>(), "size {k}");
    }
    assert_ne!(
        labels::disjoint_subsets(15, 3, 1),
        labels::disjoint_subsets(15, 3, 2)
    );
}

/// Two narrow classifiers: their maps are the same whatever the chunking (noise keyed by
/// image and member), and a label is `1 + class` exactly on the consensus' top decile.
#[test]
fn labels_do_not_depend_on_chunking() {
    let items = toy_items(20);
    let set = ItemSet::make(&items, 3, 0..20, 32).unwrap();
    let dev = Device::Cpu;
    let x = set.tensor(0..20, &dev).unwrap();
    let members: Vec<_> = ensemble::members(32).into_iter().skip(1).take(2).collect();
    let trained =
        ensemble::train_members(&members, &x, &set.classes, (&x, &set.classes), 1, 10).unwrap();
    assert!(trained
        .iter()
        .all(|m| m.record.final_loss.is_finite() && m.record.parameters > 0));
    let models: Vec<_> = trained.iter().map(|m| &m.trained.model).collect();
    let sg = SmoothGrad {
        samples: 2,
        noise: NoiseLevel::Fraction(0.15),
        batch: 5,
    };
    let a = labels::member_maps(&models, &sg, &set, 4..11, 3).unwrap();
    let b = labels::member_maps(&models, &sg, &set, 4..11, 7).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.len(), a[0].len(), a[0][0].len()), (2, 7, 32 * 32));
    assert!(a[0][0].iter().all(|v| v.is_finite() && *v >= 0.0));
    for j in 0..7 {
        let per: Vec<Vec<f32>> = a.iter().map(|m| m[j].clone()).collect();
        let label = labels::pssl_label(&set, 4 + j, &per);
        let d = deciles(&segkit::train::pssl::consensus::consensus(&per));
        let c = 1 + set.classes[4 + j] as u8;
        for (l, d) in label.iter().zip(&d) {
            assert_eq!(*l, if *d == 9 { c } else { 0 });
        }
        let top = label.iter().filter(|l| **l != 0).count();
        assert!((90..=110).contains(&top), "{top} D9 pixels of 1024");
    }
    let rows = labels::ensemble_rows(&set, 4, &a, &[1, 2, 3], SUBSET_SEED);
    assert_eq!(rows.len(), 2, "sizes above the ensemble are left out");
    assert_eq!(rows[0].subsets.len(), 2);
    let mean = (rows[0].subset_iou[0] + rows[0].subset_iou[1]) / 2.0;
    assert!((rows[0].mean_iou - mean).abs() < 1e-12);
    assert!((0.0..=1.0).contains(&rows[0].precision));
    assert_eq!(
        labels::precision(&[true, true, false], &[true, false, true]),
        0.5
    );
    let refs = labels::reference_rows(&set, 0..20, SUBSET_SEED);
    assert!(rows
        .iter()
        .chain(&refs)
        .all(|r| (0.0..=1.0).contains(&r.mean_iou)));
    assert!(refs[2].mean_iou >= refs[0].mean_iou && refs[2].mean_iou >= refs[1].mean_iou);
}

fn toy_sizes() -> Sizes {
    Sizes {
        size: 32,
        train: 24,
        pssl_train: 16,
        heldout: 8,
        epochs: 1,
        batch: 8,
        samples: 2,
        noise: 0.15,
        chunk: 4,
        pretrain_iters: 2,
        finetune_iters: 2,
        val: 2,
        seeds: 2,
    }
}

/// The whole pipeline at toy size: 15 classifiers, the IoU table, labels, then the R50
/// classifier, two seeds of PSSL pre-training and of the three fine-tuning arms; then the
/// same from the recorded labels (`--from-labels`), which reuses them untouched, and a
/// refusal of labels made with other sizes.
#[test]
fn pipeline_runs_end_to_end_at_toy_size() {
    let items = toy_items(40);
    let work = tempfile::tempdir().unwrap();
    let canvases = work.path().join("canvases");
    crate::demo_data::write_split(&items, &canvases, "train", 1, 0, 4).unwrap();
    crate::demo_data::write_split(&items, &canvases, "val", 2, 0, 2).unwrap();
    let sizes = toy_sizes();
    let dirs = Dirs {
        canvases,
        work: work.path().join("work"),
    };
    let r = run_pipeline(&items, &sizes, &dirs, "toy", None).unwrap();
    assert_eq!(r.labels.members.len(), 15);
    assert!(r.labels_from.is_none());
    let sizes_seen: Vec<usize> = r.labels.label_iou.iter().map(|x| x.ensemble_size).collect();
    assert_eq!(sizes_seen, vec![1, 3, 5, 15, 0, 0, 0]);
    assert!(r
        .labels
        .label_iou
        .iter()
        .all(|x| (0.0..=1.0).contains(&x.mean_iou)));
    assert!((0.0..=1.0).contains(&r.labels.train_label_iou));
    let c = &r.comparison;
    assert_eq!(c.classifier.name, arms::R50_CLASSIFIER);
    assert_eq!(
        c.pretrain.iter().map(|x| x.seed).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(c.pretrain.iter().all(|x| x.eval.num_images == 8));
    let runs: Vec<(&str, u64)> = c
        .finetune
        .iter()
        .map(|x| (x.name.as_str(), x.seed))
        .collect();
    assert_eq!(
        runs,
        [
            ("pssl", 0),
            ("scratch", 0),
            ("classifier_backbone", 0),
            ("pssl", 1),
            ("scratch", 1),
            ("classifier_backbone", 1)
        ]
    );
    for x in c.pretrain.iter().chain(&c.finetune) {
        assert_eq!(x.iterations, 2);
        assert!(x.final_loss.is_finite(), "{}", x.name);
        if x.name != "pssl_pretrain" {
            assert_eq!(x.eval.num_images, 2);
        }
    }
    assert_eq!(c.summary.len(), 3);
    for (a, (name, _)) in c.summary.iter().zip(arms::ARMS) {
        assert_eq!(a.name, name);
        let v: Vec<f64> = c
            .finetune
            .iter()
            .filter(|x| x.name == name)
            .map(|x| x.eval.miou)
            .collect();
        assert_eq!(a.miou, v);
        assert!((a.mean - (v[0] + v[1]) / 2.0).abs() < 1e-12);
    }
    // The PSSL labels written for pre-training are the items' images and D9 labels.
    let pssl = dirs.work.join("pssl-data");
    let ann_path = pssl.join("annotations/train/00000.png");
    let ann = image::open(&ann_path).unwrap().to_luma8();
    let class = 1 + items.labels[0];
    assert!(ann.pixels().all(|p| p.0[0] == 0 || p.0[0] == class));

    // Reuse: the label stage is read back, not recomputed; the dataset is left as it was.
    let before = std::fs::read(&ann_path).unwrap();
    let one = Sizes {
        seeds: 1,
        ..toy_sizes()
    };
    let again = run_pipeline(&items, &one, &dirs, "toy reuse", Some(&pssl)).unwrap();
    assert_eq!(again.labels_from.as_deref(), Some(pssl.as_path()));
    // (compared after one JSON round trip: the record's floats are read back from text)
    let text = |l: &LabelStage| serde_json::to_string(l).unwrap();
    let read: LabelStage = serde_json::from_str(&text(&r.labels)).unwrap();
    assert_eq!(text(&again.labels), text(&read));
    assert_eq!(std::fs::read(&ann_path).unwrap(), before);
    assert_eq!(again.comparison.finetune.len(), 3);
    assert!(!again.seconds.iter().any(|(s, _)| s == "classifiers"));
    let other = Sizes {
        samples: 3,
        ..toy_sizes()
    };
    let e = run_pipeline(&items, &other, &dirs, "toy", Some(&pssl)).unwrap_err();
    assert!(e.to_string().contains("samples 2 (asked 3)"), "{e}");
    let e = reuse_labels(&dirs.work, &sizes).unwrap_err();
    assert!(e.to_string().contains("labels.json"), "{e}");
}

#[test]
fn arm_summary_is_mean_and_sample_spread() {
    let a = arms::summarise("x", &[0.2, 0.4, 0.3]);
    assert!((a.mean - 0.3).abs() < 1e-12);
    assert!((a.std - 0.1).abs() < 1e-12);
    assert_eq!((a.min, a.max), (0.2, 0.4));
    assert_eq!(arms::summarise("y", &[0.5]).std, 0.0);
}

/// (b)'s initial weights: every `backbone.*` tensor is the R50 classifier's variable (its
/// body at output stride 32 has the dilated body's tensors), bit for bit; every other
/// tensor is the from-scratch run's initial value of the same seed.
#[test]
fn backbone_init_takes_the_classifiers_backbone() {
    use segkit::core::checkpoint::StateDict;
    use segkit::train::classify::{train_classifier, ClassifyConfig};
    let items = toy_items(10);
    let work = tempfile::tempdir().unwrap();
    let canvases = work.path().join("canvases");
    crate::demo_data::write_split(&items, &canvases, "train", 1, 0, 2).unwrap();
    crate::demo_data::write_split(&items, &canvases, "val", 2, 0, 2).unwrap();
    let demo = arms::r50_classifier().unwrap();
    let x = ItemSet::make(&items, 1, 0..2, 32).unwrap();
    let tc = ClassifyConfig {
        optimizer: segkit::train::OptimizerConfig::Sgd {
            lr: 0.0,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        epochs: 0,
        batch_size: 2,
        seed: 77,
    };
    let t = train_classifier(
        &demo.cfg,
        &tc,
        &x.tensor(0..2, &Device::Cpu).unwrap(),
        &x.classes,
        &mut |_, _| {},
    )
    .unwrap();
    let vars: std::collections::HashMap<String, candle_core::Tensor> = t
        .varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let path = work.path().join("init.safetensors");
    let same = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let n =
        segment::backbone_init(&canvases, &work.path().join("scratch"), &vars, &path, 1).unwrap();
    let init = StateDict::load(&path).unwrap();
    let scratch_of = |seed| {
        let out = work.path().join(format!("s{seed}"));
        let cfg = segment::finetune_config(&canvases, &out, 1, 1, None, seed);
        segkit::train::Trainer::new(cfg).unwrap().weights().unwrap()
    };
    let (scratch, seed0) = (scratch_of(1), scratch_of(0));
    let head = "decode_head.conv_seg.weight";
    assert!(
        !same(&scratch[head], &seed0[head]),
        "seeds initialise apart"
    );
    assert_eq!(init.len(), scratch.len());
    let mut backbone = 0;
    for (k, v) in init.iter() {
        match k.strip_prefix("backbone.") {
            Some(rest) => {
                backbone += 1;
                assert!(same(v, &vars[rest]), "{k}");
            }
            None => assert!(same(v, &scratch[k]), "{k}"),
        }
    }
    assert_eq!(backbone, n);
    assert!(n > 40 && vars.keys().filter(|k| !k.starts_with("fc.")).count() == n);
}
