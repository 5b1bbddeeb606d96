//! OneFormer training on a tiny model: the task draw honours `tasks`, a few AdamW steps lower
//! the loss, evaluation reports mIoU, PQ and AP.

use std::collections::HashMap;

use candle_core::{DType, Device, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use segkit_data::{DatasetInfo, InstanceAnnotation, Sample, SegDataset};
use segkit_models::OneFormerConfig;
use segkit_oneformer::tokenizer::Task;

use super::{param_group, OneFormerSpec, OneFormerTask};
use crate::data::Batch;
use crate::task::TrainModel;

const S: usize = 32;

/// A OneFormer small enough for a unit test: Swin embed 8, width 64, 10 queries, 3 decoder
/// layers, a one-layer text mapper, 3 classes (background stuff, two things), 1024 points.
pub(crate) fn tiny_config() -> OneFormerConfig {
    let mut c = OneFormerConfig::ade20k_swin_tiny();
    c.name = "oneformer_tiny_test".into();
    if let segkit_models::oneformer::OneFormerBackboneConfig::Swin(s) = &mut c.backbone {
        s.embed_dim = 8;
        s.depths = vec![1, 1, 1, 1];
        s.num_heads = vec![1, 1, 2, 2];
        s.mlp_ratio = 2.0;
        s.drop_path_rate = 0.0;
    }
    let p = &mut c.pixel_decoder;
    (
        p.conv_dim,
        p.mask_dim,
        p.encoder_layers,
        p.encoder_feedforward_dim,
    ) = (64, 64, 1, 64);
    p.dropout = 0.0;
    let d = &mut c.decoder;
    (
        d.num_queries,
        d.hidden_dim,
        d.num_labels,
        d.num_attention_heads,
    ) = (10, 64, 3, 4);
    (
        d.dim_feedforward,
        d.decoder_layers,
        d.query_dec_layers,
        d.dropout,
    ) = (128, 3, 1, 0.0);
    (d.conv_dim, d.mask_dim) = (None, None);
    let t = &mut c.text_mapper;
    (
        t.text_encoder_width,
        t.text_encoder_num_layers,
        t.text_encoder_n_ctx,
        t.hidden_dim,
    ) = (64, 1, 2, 64);
    c.labels = vec!["background".into(), "square".into(), "disc".into()];
    c.loss = segkit_losses::OneFormerLossConfig {
        num_points: 1024,
        ..segkit_losses::OneFormerLossConfig::oneformer(3)
    };
    c.preprocess.shortest_edge = S;
    c.preprocess.longest_edge = S;
    c
}

fn spec(tasks: &[&str]) -> OneFormerSpec {
    OneFormerSpec {
        config: Box::new(tiny_config()),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        thing_classes: Some(vec![1, 2]),
        backbone_multiplier: 0.1,
    }
}

/// A model whose variables hold the trainer's initial values for `seed`.
pub(crate) fn build(tasks: &[&str], seed: u64) -> (OneFormerTask, HashMap<String, Var>) {
    let vm = VarMap::new();
    let task = OneFormerTask::new(
        spec(tasks),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let vars: HashMap<String, Var> = vm.data().lock().unwrap().clone();
    for (k, v) in &vars {
        v.set(&task.init_value(k, v.dims(), seed).unwrap()).unwrap();
    }
    (task, vars)
}

/// Image `i` of the toy set: grey background (stuff) with a red square and a blue disc
/// (things) at positions that depend on `i`.
pub(crate) fn sample(i: usize) -> Sample {
    let (mut img, mut sem) = (vec![0u8; S * S * 3], vec![0u16; S * S]);
    let (sq, disc) = ((3 + 5 * i) % 14, (17 + 3 * i) % 12 + 8);
    let mut masks = [vec![false; S * S], vec![false; S * S], vec![false; S * S]];
    for y in 0..S {
        for x in 0..S {
            let p = y * S + x;
            let c = if (sq..sq + 9).contains(&y) && (sq..sq + 9).contains(&x) {
                1
            } else if (y as i64 - disc as i64).pow(2) + (x as i64 - 20).pow(2) <= 25 {
                2
            } else {
                0
            };
            masks[c][p] = true;
            sem[p] = c as u16;
            let rgb = [[120, 120, 120], [220, 30, 30], [30, 40, 220]][c];
            img[p * 3..p * 3 + 3].copy_from_slice(&rgb);
        }
    }
    let instances = masks
        .into_iter()
        .enumerate()
        .map(|(c, mask)| InstanceAnnotation {
            class_id: c as u32,
            mask,
            iscrowd: false,
        })
        .collect();
    Sample {
        path: format!("toy_{i}.png").into(),
        width: S,
        height: S,
        image: img,
        semantic: Some(sem),
        instances: Some(instances),
    }
}

struct Toy(Vec<Sample>, DatasetInfo);

impl SegDataset for Toy {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn info(&self) -> &DatasetInfo {
        &self.1
    }
    fn get(&self, index: usize) -> segkit_data::Result<Sample> {
        Ok(self.0[index].clone())
    }
}

fn batch(task: &OneFormerTask, idx: &[usize]) -> Batch {
    let items: Vec<_> = idx
        .iter()
        .map(|&i| segkit_data::augment::Augmented::new(sample(i)).unwrap())
        .collect();
    crate::data::collate(&items, task.preprocessor(), None, 255, &Device::Cpu).unwrap()
}

#[test]
fn task_draws_follow_the_enabled_tasks() {
    let (task, _) = build(&["semantic"], 1);
    let b = batch(&task, &[0, 1]);
    let mut rng = 5;
    for _ in 0..4 {
        let t = task.targets(&b, &mut rng).unwrap();
        assert!(t.iter().all(|t| t.task == Task::Semantic));
        assert_eq!(t[0].classes, vec![0, 1, 2]);
    }
    let (task, _) = build(&["panoptic", "instance", "semantic"], 1);
    let seen: std::collections::HashSet<Task> = (0..30)
        .flat_map(|_| task.targets(&b, &mut rng).unwrap())
        .map(|t| t.task)
        .collect();
    assert_eq!(seen.len(), 3, "uniform draws over three tasks");
    assert!(OneFormerTask::new(
        OneFormerSpec {
            tasks: vec!["depth".into()],
            ..spec(&[])
        },
        VarBuilder::zeros(DType::F32, &Device::Cpu)
    )
    .is_err());
}

/// OneFormer's `build_optimizer` groups on segkit's variable names: every variable of the
/// tiny model is classified, and the classes are the official ones.
#[test]
fn param_groups_follow_build_optimizer() {
    let vm = VarMap::new();
    let task = OneFormerTask::new(
        spec(&["panoptic"]),
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    let (mut backbone, mut no_decay) = (0, Vec::new());
    for n in &names {
        let g = task.param_group(n);
        assert_eq!(g, param_group(n, 0.1));
        if g.lr_mult == 0.1 {
            backbone += 1;
            assert!(n.starts_with("model.pixel_level_module.encoder."), "{n}");
        } else {
            assert_eq!(g.lr_mult, 1.0, "{n}");
        }
        if g.decay_mult == 0.0 {
            no_decay.push(n.as_str());
        }
    }
    assert!(backbone > 0);
    let g = |n: &str| {
        assert!(names.iter().any(|k| k == n), "no variable {n}");
        let g = param_group(n, 0.1);
        (g.lr_mult, g.decay_mult)
    };
    let enc = "model.pixel_level_module.encoder";
    let blk = format!("{enc}.encoder.layers.0.blocks.0");
    assert_eq!(g(&format!("{blk}.attention.self.query.weight")), (0.1, 1.0));
    assert_eq!(g(&format!("{blk}.attention.self.query.bias")), (0.1, 1.0));
    assert_eq!(
        g(&format!(
            "{blk}.attention.self.relative_position_bias_table"
        )),
        (0.1, 0.0)
    );
    assert_eq!(g(&format!("{blk}.layernorm_before.weight")), (0.1, 0.0));
    assert_eq!(g(&format!("{enc}.embeddings.norm.weight")), (0.1, 0.0));
    assert_eq!(
        g(&format!(
            "{enc}.embeddings.patch_embeddings.projection.weight"
        )),
        (0.1, 1.0)
    );
    assert_eq!(
        g(&format!("{enc}.hidden_states_norms.stage1.weight")),
        (0.1, 0.0)
    );
    let dec = "model.pixel_level_module.decoder";
    assert_eq!(
        g(&format!("{dec}.input_projections.0.1.weight")),
        (1.0, 0.0)
    );
    assert_eq!(
        g(&format!("{dec}.input_projections.0.0.weight")),
        (1.0, 1.0)
    );
    assert_eq!(g(&format!("{dec}.adapter_1.1.bias")), (1.0, 0.0));
    assert_eq!(g(&format!("{dec}.layer_1.1.weight")), (1.0, 0.0));
    // A plain nn.Parameter in the official pixel decoder: decayed.
    assert_eq!(g(&format!("{dec}.level_embed")), (1.0, 1.0));
    let tm = "model.transformer_module";
    assert_eq!(g(&format!("{tm}.queries_embedder.weight")), (1.0, 0.0));
    assert_eq!(g(&format!("{tm}.level_embed.weight")), (1.0, 0.0));
    // `class_embed` is a Linear: decayed, its bias too.
    assert_eq!(g(&format!("{tm}.decoder.class_embed.bias")), (1.0, 1.0));
    assert_eq!(g(&format!("{tm}.decoder.decoder_norm.weight")), (1.0, 0.0));
    let te = "model.text_mapper.text_encoder";
    assert_eq!(g(&format!("{te}.token_embedding.weight")), (1.0, 0.0));
    assert_eq!(g(&format!("{te}.positional_embedding")), (1.0, 1.0));
    assert_eq!(g(&format!("{te}.ln_final.weight")), (1.0, 0.0));
    assert_eq!(g("model.text_mapper.prompt_ctx.weight"), (1.0, 0.0));
    assert_eq!(g("criterion.logit_scale"), (1.0, 1.0));
    assert_eq!(
        task.clip_grad(),
        Some(crate::config::ClipGradConfig::l2(0.01))
    );
}

#[test]
fn steps_lower_the_loss_and_evaluation_reports_pq_ap_miou() {
    let (task, vars) = build(&["panoptic", "instance", "semantic"], 3);
    let names = task.loss_names().to_vec();
    assert_eq!(names.len(), 4 + 3 * 2, "{names:?}");
    let params: Vec<Var> = vars.values().cloned().collect();
    let mut opt = candle_nn::AdamW::new(
        params,
        candle_nn::ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.05,
            ..Default::default()
        },
    )
    .unwrap();
    let b = batch(&task, &[0, 1]);
    let mut rng = 11u64;
    let mut curve = Vec::new();
    for _ in 0..20 {
        let l = task.losses(&b, 255, &mut rng).unwrap();
        assert_eq!(
            l.items.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            names
        );
        let v = l.total.to_scalar::<f32>().unwrap();
        assert!(v.is_finite());
        curve.push(v);
        opt.backward_step(&l.total).unwrap();
    }
    // Tasks are drawn per image and step, so single losses are noisy: compare the means of
    // the first and the last four steps.
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (first, last) = (mean(&curve[..4]), mean(&curve[16..]));
    assert!(last < 0.75 * first, "loss {first} -> {last}: {curve:?}");
    let info = DatasetInfo {
        classes: task.meta().classes.clone(),
        palette: task.meta().palette.clone(),
        ignore_index: 255,
        thing_classes: vec![1, 2],
    };
    let val = Toy(vec![sample(5), sample(6)], info);
    let weights = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let r = task.evaluate(weights, &val, 1).unwrap();
    for k in ["PQ", "SQ", "RQ", "AP", "AP50"] {
        let v = r.extra[k];
        assert!((0.0..=100.0).contains(&v), "{k} = {v}");
    }
    assert!((0.0..=1.0).contains(&r.miou) || r.miou <= 100.0);
    eprintln!(
        "loss {first} -> {last}; {}",
        serde_json::to_string(&r.extra).unwrap()
    );
}
