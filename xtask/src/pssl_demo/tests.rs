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

/// The whole pipeline at toy size: 15 classifiers, the IoU table, labels, PSSL pre-training
/// and the three fine-tuning runs; (b)'s initial backbone is the classifier's.
#[test]
fn pipeline_runs_end_to_end_at_toy_size() {
    let items = toy_items(40);
    let work = tempfile::tempdir().unwrap();
    let canvases = work.path().join("canvases");
    crate::demo_data::write_split(&items, &canvases, "train", 1, 0, 4).unwrap();
    crate::demo_data::write_split(&items, &canvases, "val", 2, 0, 2).unwrap();
    let sizes = Sizes {
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
    };
    let dirs = Dirs {
        canvases,
        work: work.path().join("work"),
    };
    let r = run_pipeline(&items, &sizes, &dirs, "toy").unwrap();
    assert_eq!(r.members.len(), 15);
    let sizes_seen: Vec<usize> = r.label_iou.iter().map(|x| x.ensemble_size).collect();
    assert_eq!(sizes_seen, vec![1, 3, 5, 15, 0, 0, 0]);
    assert!(r
        .label_iou
        .iter()
        .all(|x| (0.0..=1.0).contains(&x.mean_iou)));
    assert!((0.0..=1.0).contains(&r.train_label_iou));
    assert_eq!(r.pretrain.eval.num_images, 8);
    let names: Vec<&str> = r.finetune.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["pssl", "scratch", "classifier_backbone"]);
    for x in std::iter::once(&r.pretrain).chain(&r.finetune) {
        assert_eq!(x.iterations, 2);
        assert!(x.final_loss.is_finite(), "{}", x.name);
        assert_eq!(
            x.eval.num_images,
            if x.name == "pssl_pretrain" { 8 } else { 2 }
        );
    }
    // The PSSL labels written for pre-training are the items' images and D9 labels.
    let ann = image::open(dirs.work.join("pssl-data/annotations/train/00000.png"))
        .unwrap()
        .to_luma8();
    let c = 1 + items.labels[0];
    assert!(ann.pixels().all(|p| p.0[0] == 0 || p.0[0] == c));
}

/// (b)'s initial weights: every `backbone.*` tensor is the demo-backbone classifier's
/// variable, bit for bit; every other tensor is the from-scratch run's initial value.
#[test]
fn backbone_init_takes_the_classifiers_backbone() {
    use segkit::core::checkpoint::StateDict;
    use segkit::train::classify::{train_classifier, ClassifyConfig};
    let items = toy_items(10);
    let work = tempfile::tempdir().unwrap();
    let canvases = work.path().join("canvases");
    crate::demo_data::write_split(&items, &canvases, "train", 1, 0, 2).unwrap();
    crate::demo_data::write_split(&items, &canvases, "val", 2, 0, 2).unwrap();
    let demo = ensemble::members(32).remove(0);
    assert_eq!(demo.cfg.name, ensemble::DEMO_BACKBONE_MEMBER);
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
    let n = segment::backbone_init(&canvases, &work.path().join("scratch"), &vars, &path).unwrap();
    let init = StateDict::load(&path).unwrap();
    let scratch = segkit::train::Trainer::new(segkit::train::TrainConfig {
        val_limit: Some(1),
        ..crate::demo_data::demo_train_config(&canvases, &work.path().join("s2"), 1)
    })
    .unwrap()
    .weights()
    .unwrap();
    assert_eq!(init.len(), scratch.len());
    let same = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
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
