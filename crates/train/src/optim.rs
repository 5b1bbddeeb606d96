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

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

use crate::config::OptimizerConfig;
use crate::TrainResult;

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
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(cfg: &OptimizerConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            state: BTreeMap::new(),
        }
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
            let st = self.state.entry(name.clone()).or_default();
            let new_p = match &self.cfg {
                OptimizerConfig::Sgd {
                    momentum,
                    weight_decay,
                    nesterov,
                    ..
                } => {
                    let d = if *weight_decay != 0.0 {
                        (&g + (&p * *weight_decay)?)?
                    } else {
                        g
                    };
                    let d = if *momentum != 0.0 {
                        let buf = match st.momentum_buffer.take() {
                            None => d.copy()?,
                            Some(b) => ((b * *momentum)? + &d)?,
                        };
                        let upd = if *nesterov {
                            (&d + (&buf * *momentum)?)?
                        } else {
                            buf.clone()
                        };
                        st.momentum_buffer = Some(buf);
                        upd
                    } else {
                        d
                    };
                    (&p - (d * lr)?)?
                }
                OptimizerConfig::AdamW {
                    betas,
                    eps,
                    weight_decay,
                    ..
                } => {
                    st.step += 1;
                    let p = if decay && *weight_decay != 0.0 {
                        (&p * (1.0 - lr * *weight_decay))?
                    } else {
                        p
                    };
                    let (b1, b2) = (betas[0], betas[1]);
                    let m = match st.exp_avg.take() {
                        // exp_avg.lerp_(grad, 1 - beta1), from zeros.
                        None => (&g * (1.0 - b1))?,
                        Some(m) => (&m + ((&g - &m)? * (1.0 - b1))?)?,
                    };
                    let g2 = (&g * &g)?;
                    let v = match st.exp_avg_sq.take() {
                        None => (g2 * (1.0 - b2))?,
                        Some(v) => ((v * b2)? + (g2 * (1.0 - b2))?)?,
                    };
                    let bc1 = 1.0 - b1.powi(st.step as i32);
                    let bc2 = 1.0 - b2.powi(st.step as i32);
                    let step_size = lr / bc1;
                    let denom = ((v.sqrt()? / bc2.sqrt())? + *eps)?;
                    let upd = (m.div(&denom)? * step_size)?;
                    st.exp_avg = Some(m);
                    st.exp_avg_sq = Some(v);
                    (p - upd)?
                }
            };
            var.set(&new_p)?;
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
}
