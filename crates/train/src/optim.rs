//! SGD with momentum and AdamW, step for step as `torch.optim.SGD` / `torch.optim.AdamW`
//! (single-tensor implementations, f32 state).
//!
//! Weight-decay rules (documented in `docs/TRAINING.md`):
//! - SGD (mmseg): L2 decay `g + wd p` on every parameter, norms and biases included (mmseg's
//!   default optimizer wrapper has no `paramwise_cfg`);
//! - AdamW (OneFormer / detectron2): decoupled decay `p *= 1 - lr wd` on weights of rank >= 2
//!   only; 1-D parameters — normalisation weights and biases — get none unless
//!   `decay_norm_and_bias` (OneFormer sets `WEIGHT_DECAY_NORM = 0`; it keeps detectron2's
//!   bias decay, which segkit leaves off by default like timm and HF).
//!
//! Parameters without a gradient (frozen stages, BatchNorm running statistics) are skipped
//! entirely, as PyTorch skips `p.grad is None`.
//!
//! Parameter groups ([`ParamGroup`], from the training config's `paramwise_cfg` or the
//! model's [`crate::TrainModel::param_group`]) scale the learning rate and the weight decay
//! per variable, as PyTorch's `param_groups` with their own `lr` / `weight_decay`;
//! [`clip_grad_norm`] is `torch.nn.utils.clip_grad_norm_` over all gradients together.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

use crate::config::{ClipGradConfig, OptimizerConfig, ParamGroup};
use crate::TrainResult;

mod kernels;

/// Per-parameter optimizer state.
#[derive(Debug, Clone, Default)]
pub struct ParamState {
    /// SGD's momentum buffer.
    pub momentum_buffer: Option<Tensor>,
    /// AdamW's first moment.
    pub exp_avg: Option<Tensor>,
    /// AdamW's second moment.
    pub exp_avg_sq: Option<Tensor>,
    /// AdamW's step count for this parameter.
    pub step: u64,
}

/// An optimizer over named parameters.
#[derive(Debug, Clone)]
pub struct Optimizer {
    cfg: OptimizerConfig,
    state: BTreeMap<String, ParamState>,
    groups: BTreeMap<String, ParamGroup>,
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(cfg: &OptimizerConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            state: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }

    /// The optimizer with per-variable multipliers (variables not named keep `(1, 1)`).
    pub fn with_groups(mut self, groups: BTreeMap<String, ParamGroup>) -> Self {
        self.groups = groups;
        self
    }

    /// The multipliers of the variable `name`.
    pub fn group(&self, name: &str) -> ParamGroup {
        self.groups.get(name).copied().unwrap_or_default()
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// The state of every parameter that has taken a step.
    pub fn state(&self) -> &BTreeMap<String, ParamState> {
        &self.state
    }

    /// Whether a parameter gets weight decay under this optimizer's rules.
    pub fn decays(&self, param: &Tensor) -> bool {
        match &self.cfg {
            OptimizerConfig::Sgd { .. } => true,
            OptimizerConfig::AdamW {
                decay_norm_and_bias,
                ..
            } => *decay_norm_and_bias || param.rank() >= 2,
        }
    }

    /// One step over `params` (name -> variable) with `grads` (name -> gradient) at learning
    /// rate `lr`. Parameters without a gradient are left alone.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> TrainResult<()> {
        for (name, var) in params {
            let Some(g) = grads.get(name) else { continue };
            let p = var.as_tensor().detach();
            let g = g.detach();
            let decay = self.decays(&p);
            let group = self.group(name);
            let lr = lr * group.lr_mult;
            let st = self.state.entry(name.clone()).or_default();
            match &self.cfg {
                OptimizerConfig::Sgd {
                    momentum,
                    weight_decay,
                    nesterov,
                    ..
                } => {
                    let wd = *weight_decay * group.decay_mult;
                    let c = kernels::Sgd {
                        weight_decay: (wd != 0.0).then_some(wd as f32),
                        momentum: (*momentum != 0.0).then_some(*momentum as f32),
                        nesterov: *nesterov,
                        lr: lr as f32,
                    };
                    let buf = st.momentum_buffer.take();
                    st.momentum_buffer = kernels::sgd(var, &g, buf, c)?;
                }
                OptimizerConfig::AdamW {
                    betas,
                    eps,
                    weight_decay,
                    ..
                } => {
                    st.step += 1;
                    let wd = *weight_decay * group.decay_mult;
                    let (b1, b2) = (betas[0], betas[1]);
                    let bc1 = 1.0 - b1.powi(st.step as i32);
                    let bc2 = 1.0 - b2.powi(st.step as i32);
                    let c = kernels::AdamW {
                        decay: (decay && wd != 0.0).then_some((1.0 - lr * wd) as f32),
                        b2: b2 as f32,
                        one_minus_b1: (1.0 - b1) as f32,
                        one_minus_b2: (1.0 - b2) as f32,
                        inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
                        eps: *eps as f32,
                        step_size: (lr / bc1) as f32,
                    };
                    let (m, v) = (st.exp_avg.take(), st.exp_avg_sq.take());
                    let (m, v) = kernels::adamw(var, &g, m, v, c)?;
                    st.exp_avg = Some(m);
                    st.exp_avg_sq = Some(v);
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`{param}.momentum_buffer`, `{param}.exp_avg`,
    /// `{param}.exp_avg_sq`) plus the per-parameter AdamW step counts.
    pub fn state_tensors(&self) -> (Vec<(String, Tensor)>, BTreeMap<String, u64>) {
        let mut out = Vec::new();
        let mut steps = BTreeMap::new();
        for (name, st) in &self.state {
            for (suffix, t) in [
                ("momentum_buffer", &st.momentum_buffer),
                ("exp_avg", &st.exp_avg),
                ("exp_avg_sq", &st.exp_avg_sq),
            ] {
                if let Some(t) = t {
                    out.push((format!("{name}.{suffix}"), t.clone()));
                }
            }
            if st.step > 0 {
                steps.insert(name.clone(), st.step);
            }
        }
        (out, steps)
    }

    /// Restores the state written by [`Optimizer::state_tensors`].
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        steps: &BTreeMap<String, u64>,
    ) -> Result<(), String> {
        self.state.clear();
        for (key, t) in tensors {
            let (name, suffix) = key
                .rsplit_once('.')
                .ok_or_else(|| format!("optimizer state key `{key}` has no suffix"))?;
            let st = self.state.entry(name.to_string()).or_default();
            match suffix {
                "momentum_buffer" => st.momentum_buffer = Some(t.clone()),
                "exp_avg" => st.exp_avg = Some(t.clone()),
                "exp_avg_sq" => st.exp_avg_sq = Some(t.clone()),
                s => return Err(format!("unknown optimizer state `{s}` of `{name}`")),
            }
        }
        for (name, &s) in steps {
            self.state.entry(name.clone()).or_default().step = s;
        }
        Ok(())
    }
}

/// Clips the gradients by their global norm (`torch.nn.utils.clip_grad_norm_(params,
/// max_norm, norm_type)`, over every gradient together): when the total norm exceeds
/// `max_norm`, every gradient is scaled by `max_norm / (norm + 1e-6)`. Returns the total
/// norm before clipping (`None` when `cfg` turns clipping off).
pub fn clip_grad_norm(
    grads: &mut HashMap<String, Tensor>,
    cfg: &ClipGradConfig,
) -> TrainResult<Option<f64>> {
    let Some(max_norm) = cfg.max_norm else {
        return Ok(None);
    };
    let p = cfg.norm_type;
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let mut total = 0f64;
    for name in names {
        total += kernels::pow_sum(&grads[name], p)?;
    }
    let norm = total.powf(1.0 / p);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.values_mut() {
            *g = kernels::scale(g, coef)?;
        }
    }
    Ok(Some(norm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(cfg: OptimizerConfig, steps: usize) -> Vec<f32> {
        let dev = Device::Cpu;
        let mut params = BTreeMap::new();
        params.insert(
            "w".to_string(),
            Var::from_tensor(&Tensor::new(&[[1f32, -2.0], [0.5, 3.0]], &dev).unwrap()).unwrap(),
        );
        params.insert(
            "b".to_string(),
            Var::from_tensor(&Tensor::new(&[0.25f32, -1.0], &dev).unwrap()).unwrap(),
        );
        let mut opt = Optimizer::new(&cfg);
        for i in 0..steps {
            let mut grads = HashMap::new();
            let s = (i + 1) as f32;
            grads.insert(
                "w".to_string(),
                Tensor::new(&[[0.1f32 * s, -0.2], [0.3, 0.05 * s]], &dev).unwrap(),
            );
            grads.insert(
                "b".to_string(),
                Tensor::new(&[0.5f32, -0.1 * s], &dev).unwrap(),
            );
            opt.step(&params, &grads, 0.1).unwrap();
        }
        let mut v = params["w"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        v.extend(params["b"].as_tensor().to_vec1::<f32>().unwrap());
        v
    }

    /// Against the update rules of `torch.optim.SGD` / `torch.optim.AdamW` (single-tensor
    /// code paths) written out in f64, lr 0.1, the gradients above, no decay on the 1-D bias
    /// for AdamW.
    #[test]
    fn matches_torch_update_rules() {
        // SGD momentum 0.9, wd 0.01, 3 steps, computed by hand in f64.
        let got = run(
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.01,
                nesterov: false,
            },
            3,
        );
        let mut p = [1f64, -2.0, 0.5, 3.0, 0.25, -1.0];
        let mut buf = [0f64; 6];
        for i in 0..3 {
            let s = (i + 1) as f64;
            let g = [0.1 * s, -0.2, 0.3, 0.05 * s, 0.5, -0.1 * s];
            for k in 0..6 {
                let d = g[k] + 0.01 * p[k];
                buf[k] = if i == 0 { d } else { 0.9 * buf[k] + d };
                p[k] -= 0.1 * buf[k];
            }
        }
        for k in 0..6 {
            assert!(
                (got[k] as f64 - p[k]).abs() < 1e-6,
                "{k}: {} vs {}",
                got[k],
                p[k]
            );
        }
        // AdamW, wd 0.1 on the matrix only.
        let got = run(
            OptimizerConfig::AdamW {
                lr: 0.1,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.1,
                decay_norm_and_bias: false,
            },
            3,
        );
        let mut p = [1f64, -2.0, 0.5, 3.0, 0.25, -1.0];
        let (mut m, mut v) = ([0f64; 6], [0f64; 6]);
        for i in 0..3i32 {
            let s = (i + 1) as f64;
            let t = i + 1;
            let g = [0.1 * s, -0.2, 0.3, 0.05 * s, 0.5, -0.1 * s];
            for k in 0..6 {
                if k < 4 {
                    p[k] *= 1.0 - 0.1 * 0.1;
                }
                m[k] = 0.9 * m[k] + 0.1 * g[k];
                v[k] = 0.999 * v[k] + 0.001 * g[k] * g[k];
                let denom = (v[k].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt()) + 1e-8;
                p[k] -= 0.1 / (1.0 - 0.9f64.powi(t)) * m[k] / denom;
            }
        }
        for k in 0..6 {
            assert!(
                (got[k] as f64 - p[k]).abs() < 1e-5,
                "{k}: {} vs {}",
                got[k],
                p[k]
            );
        }
    }

    // tests/parity/gen_optim_groups.py: torch.optim.AdamW / SGD with one param_group per
    // parameter (lr and weight_decay scaled as below) and clip_grad_norm_(all, 0.5) before
    // each of three steps.
    const TORCH_ADAMW: [f64; 12] = [
        0.9677242040634155,
        -1.9640843868255615,
        0.46857988834381104,
        2.961730480194092,
        -0.053950756788253784,
        -0.680166482925415,
        0.7069149017333984,
        0.20048390328884125,
        0.5995160937309265,
        -0.9930850267410278,
        0.8004840612411499,
        -0.0799245834350586,
    ];
    const TORCH_ADAMW_NORMS: [f64; 3] = [1.0319883823394775, 1.0062305927276611, 1.151086449623108];
    const TORCH_SGD: [f64; 12] = [
        0.9949349761009216,
        -1.9934955835342407,
        0.49164578318595886,
        2.996065139770508,
        0.11414124816656113,
        -0.9493796825408936,
        0.9099130034446716,
        0.3923405706882477,
        0.3807446360588074,
        -0.7450434565544128,
        1.0865426063537598,
        0.08420918881893158,
    ];
    const TORCH_SGD_NORMS: [f64; 3] = [1.0319883823394775, 1.0062305927276611, 1.151086449623108];

    /// Parameter groups (lr x 0.1 on `backbone.*`, no decay on the norm and the embedding)
    /// and full-model clipping at 0.5, three steps, against PyTorch's optimizers.
    #[test]
    fn groups_and_clipping_match_torch() {
        let dev = Device::Cpu;
        let init: [(&str, Vec<f32>, Vec<usize>); 4] = [
            ("backbone.w", vec![1.0, -2.0, 0.5, 3.0], vec![2, 2]),
            ("head.b", vec![0.25, -1.0], vec![2]),
            ("head.norm.weight", vec![1.0, 0.5], vec![2]),
            ("head.embed.weight", vec![0.3, -0.7, 1.1, 0.2], vec![2, 2]),
        ];
        let grads_at = |i: usize| -> Vec<Vec<f32>> {
            let s = (i + 1) as f32;
            vec![
                vec![0.1 * s, -0.2, 0.3, 0.05 * s],
                vec![0.5, -0.1 * s],
                vec![0.2 * s, 0.4],
                vec![-0.3, 0.1 * s, 0.05, 0.6 / s],
            ]
        };
        let paramwise: crate::config::ParamwiseConfig = serde_json::from_str(
            r#"{"custom_keys": {"backbone": {"lr_mult": 0.1}, "norm": {"decay_mult": 0.0},
                "embed": {"decay_mult": 0.0}}}"#,
        )
        .unwrap();
        let clip = ClipGradConfig::l2(0.5);
        let cases = [
            (
                OptimizerConfig::AdamW {
                    lr: 0.1,
                    betas: [0.9, 0.999],
                    eps: 1e-8,
                    weight_decay: 0.1,
                    decay_norm_and_bias: true,
                },
                &TORCH_ADAMW,
                &TORCH_ADAMW_NORMS,
            ),
            (
                OptimizerConfig::Sgd {
                    lr: 0.1,
                    momentum: 0.9,
                    weight_decay: 0.01,
                    nesterov: false,
                },
                &TORCH_SGD,
                &TORCH_SGD_NORMS,
            ),
        ];
        for (cfg, want, want_norms) in cases {
            let params: BTreeMap<String, Var> = init
                .iter()
                .map(|(k, v, d)| {
                    let t = Tensor::from_vec(v.clone(), d.as_slice(), &dev).unwrap();
                    (k.to_string(), Var::from_tensor(&t).unwrap())
                })
                .collect();
            let groups = params
                .keys()
                .map(|k| (k.clone(), paramwise.group(k)))
                .collect();
            let mut opt = Optimizer::new(&cfg).with_groups(groups);
            for (i, want_norm) in want_norms.iter().enumerate() {
                let mut grads: HashMap<String, Tensor> = init
                    .iter()
                    .zip(grads_at(i))
                    .map(|((k, _, d), g)| {
                        (
                            k.to_string(),
                            Tensor::from_vec(g, d.as_slice(), &dev).unwrap(),
                        )
                    })
                    .collect();
                let n = clip_grad_norm(&mut grads, &clip).unwrap().unwrap();
                assert!((n - want_norm).abs() < 1e-6, "{cfg:?} norm {i}: {n}");
                opt.step(&params, &grads, 0.1).unwrap();
            }
            let got: Vec<f32> = init
                .iter()
                .flat_map(|(k, _, _)| {
                    params[*k]
                        .as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect();
            for (k, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!((*g as f64 - w).abs() < 1e-6, "{cfg:?} [{k}]: {g} vs {w}");
            }
        }
    }

    /// No clipping below the threshold, none with `max_norm: null`; mmengine's key order.
    #[test]
    fn clipping_threshold_and_key_order() {
        let dev = Device::Cpu;
        let mut g: HashMap<String, Tensor> =
            [("a".to_string(), Tensor::new(&[0.3f32, 0.4], &dev).unwrap())].into();
        let n = clip_grad_norm(&mut g, &ClipGradConfig::l2(1.0))
            .unwrap()
            .unwrap();
        assert!((n - 0.5).abs() < 1e-7, "{n}");
        assert_eq!(g["a"].to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
        let off = ClipGradConfig {
            max_norm: None,
            norm_type: 2.0,
        };
        assert_eq!(clip_grad_norm(&mut g, &off).unwrap(), None);
        // mmengine's key order: the longest matching key wins.
        let p: crate::config::ParamwiseConfig = serde_json::from_str(
            r#"{"custom_keys": {"head": {"lr_mult": 2.0}, "head.norm": {"lr_mult": 3.0}}}"#,
        )
        .unwrap();
        assert_eq!(p.group("head.norm.weight").lr_mult, 3.0);
        assert_eq!(p.group("head.b").lr_mult, 2.0);
        assert_eq!(p.group("neck.b"), ParamGroup::default());
    }
}
