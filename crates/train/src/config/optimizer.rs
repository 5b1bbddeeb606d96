//! The optimizer and learning-rate schedule of the training config (`optimizer`,
//! `schedule`).

use serde::{Deserialize, Serialize};

fn default_momentum() -> f64 {
    0.9
}
fn default_sgd_wd() -> f64 {
    5e-4
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_adamw_wd() -> f64 {
    0.01
}

/// The optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD` as mmseg configures it (`lr=0.01, momentum=0.9,
    /// weight_decay=5e-4`): L2 weight decay added to the gradient of **every** parameter
    /// (mmseg's default has no `paramwise_cfg`), then momentum `buf = m buf + g` (dampening
    /// 0), `p -= lr buf` (Nesterov: `p -= lr (g + m buf)`).
    #[serde(rename = "SGD")]
    Sgd {
        /// Base learning rate.
        lr: f64,
        /// Momentum. Default 0.9.
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// L2 weight decay. Default 5e-4.
        #[serde(default = "default_sgd_wd")]
        weight_decay: f64,
        /// Nesterov momentum. Default false.
        #[serde(default)]
        nesterov: bool,
    },
    /// `torch.optim.AdamW` (decoupled weight decay `p *= 1 - lr wd`, then Adam with bias
    /// correction). As OneFormer / detectron2 configure it (`WEIGHT_DECAY_NORM = 0`), norm
    /// parameters get no decay; biases get none either unless `decay_bias` (detectron2's
    /// default `WEIGHT_DECAY_BIAS = WEIGHT_DECAY` decays them; timm and HF exclude them).
    AdamW {
        /// Base learning rate.
        lr: f64,
        /// `(beta1, beta2)`. Default (0.9, 0.999).
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Denominator epsilon. Default 1e-8.
        #[serde(default = "default_adam_eps")]
        eps: f64,
        /// Decoupled weight decay. Default 0.01 (PyTorch's).
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
        /// Decay normalisation weights and biases too (1-D parameters). Default false.
        #[serde(default)]
        decay_norm_and_bias: bool,
    },
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::AdamW { lr, .. } => *lr,
        }
    }
}

fn default_power() -> f64 {
    0.9
}
fn default_min_lr() -> f64 {
    1e-4
}

/// The learning-rate policy over the iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum LrPolicy {
    /// mmseg `PolyLR(power, eta_min)`: `(base - min) (1 - it / iters)^power + min`.
    Poly {
        /// Exponent. Default 0.9.
        #[serde(default = "default_power")]
        power: f64,
        /// Learning rate at the end (`eta_min`). Default 1e-4.
        #[serde(default = "default_min_lr")]
        min_lr: f64,
    },
    /// The base learning rate throughout.
    Constant {},
}

fn default_start_factor() -> f64 {
    1e-3
}

/// Linear warm-up (mmengine `LinearLR`, detectron2 `WarmupPolyLR`'s linear warm-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    /// Length of the warm-up in iterations.
    pub iters: usize,
    /// Factor at iteration 0, rising linearly to 1 at `iters`. Default 1e-3.
    #[serde(default = "default_start_factor")]
    pub start_factor: f64,
}

/// The learning-rate schedule: a policy, optionally multiplied by a linear warm-up factor
/// (as detectron2's `WarmupPolyLR`: `lr = warmup(it) * policy(it)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The policy. Default Poly (0.9, 1e-4).
    #[serde(default = "default_policy")]
    pub policy: LrPolicy,
    /// Optional warm-up. Default none.
    #[serde(default)]
    pub warmup: Option<WarmupConfig>,
}

fn default_policy() -> LrPolicy {
    LrPolicy::Poly {
        power: default_power(),
        min_lr: default_min_lr(),
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            policy: default_policy(),
            warmup: None,
        }
    }
}

impl ScheduleConfig {
    /// The learning rate of iteration `it` (0-based) of `iters`, for base rate `base`.
    pub fn lr_at(&self, base: f64, it: usize, iters: usize) -> f64 {
        let t = if iters == 0 {
            1.0
        } else {
            (it as f64 / iters as f64).min(1.0)
        };
        let lr = match self.policy {
            LrPolicy::Poly { power, min_lr } => (base - min_lr) * (1.0 - t).powf(power) + min_lr,
            LrPolicy::Constant {} => base,
        };
        match &self.warmup {
            Some(w) if it < w.iters && w.iters > 0 => {
                let f = w.start_factor + (1.0 - w.start_factor) * it as f64 / w.iters as f64;
                lr * f
            }
            _ => lr,
        }
    }
}

fn one() -> f64 {
    1.0
}
fn two() -> f64 {
    2.0
}

/// Learning-rate and weight-decay multipliers of a group of parameters (mmengine's
/// `custom_keys` values; detectron2's per-parameter `lr` / `weight_decay` overrides).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// Multiplier of the scheduled learning rate. Default 1.
    #[serde(default = "one")]
    pub lr_mult: f64,
    /// Multiplier of the optimizer's weight decay. Default 1.
    #[serde(default = "one")]
    pub decay_mult: f64,
}

impl Default for ParamGroup {
    fn default() -> Self {
        Self {
            lr_mult: 1.0,
            decay_mult: 1.0,
        }
    }
}

/// Per-parameter optimizer rules, mmengine's `paramwise_cfg` (`custom_keys` only): a
/// variable whose name contains a key takes that key's multipliers; where several keys
/// match, the longest wins (mmengine sorts the keys by length, longest first). Variables no
/// key matches keep `(1, 1)`. The optimizer's own decay rule still applies on top (AdamW's
/// 1-D parameters get no decay unless `decay_norm_and_bias`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamwiseConfig {
    /// Name substring -> multipliers.
    #[serde(default)]
    pub custom_keys: std::collections::BTreeMap<String, ParamGroup>,
}

impl ParamwiseConfig {
    /// The multipliers of the variable `name`.
    pub fn group(&self, name: &str) -> ParamGroup {
        // Longest key first; among keys of one length, the alphabetically first (mmengine's
        // `sorted(sorted(keys), key=len, reverse=True)`).
        let mut best: Option<(&String, &ParamGroup)> = None;
        for (k, g) in &self.custom_keys {
            if name.contains(k.as_str()) && best.is_none_or(|(b, _)| k.len() > b.len()) {
                best = Some((k, g));
            }
        }
        best.map(|(_, g)| *g).unwrap_or_default()
    }

    /// Checks the multipliers (finite, >= 0).
    pub fn validate(&self) -> Result<(), String> {
        for (k, g) in &self.custom_keys {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !(ok(g.lr_mult) && ok(g.decay_mult)) {
                return Err(format!(
                    "`paramwise_cfg.custom_keys.{k}`: lr_mult and decay_mult must be finite and \
                     >= 0, got {} and {}",
                    g.lr_mult, g.decay_mult
                ));
            }
        }
        Ok(())
    }
}

/// Gradient clipping by the global norm of all gradients together (mmengine's `clip_grad`,
/// `torch.nn.utils.clip_grad_norm_`; detectron2's `CLIP_TYPE: full_model`): when the
/// `norm_type`-norm of every gradient concatenated exceeds `max_norm`, all are scaled by
/// `max_norm / (norm + 1e-6)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipGradConfig {
    /// The largest norm; `null` turns clipping off (a model's default clipping included).
    pub max_norm: Option<f64>,
    /// The norm's order `p` (`(sum |g|^p)^(1/p)`). Default 2.
    #[serde(default = "two")]
    pub norm_type: f64,
}

impl ClipGradConfig {
    /// Clipping at `max_norm` in the L2 norm.
    pub fn l2(max_norm: f64) -> Self {
        Self {
            max_norm: Some(max_norm),
            norm_type: 2.0,
        }
    }

    /// Checks `max_norm > 0` and a finite `norm_type >= 1`.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = self.max_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(format!("`clip_grad.max_norm` must be positive, got {m}"));
            }
        }
        if !(self.norm_type.is_finite() && self.norm_type >= 1.0) {
            return Err(format!(
                "`clip_grad.norm_type` must be finite and >= 1, got {}",
                self.norm_type
            ));
        }
        Ok(())
    }
}
