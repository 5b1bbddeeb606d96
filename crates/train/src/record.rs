//! What the trainer records: each iteration's losses ([`IterLosses`]), the sums since the last
//! log record (which checkpoints store bit for bit, so that a resumed run logs exactly what the
//! uninterrupted run would) and the run's summary ([`TrainSummary`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::eval::EvalResult;
use crate::losses::NamedLosses;
use crate::TrainResult;

/// The losses of one iteration (averaged over the accumulated batches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterLosses {
    /// Iteration number (1-based: the number of optimizer steps taken).
    pub iter: usize,
    /// Learning rate of the step.
    pub lr: f64,
    /// Total loss: the sum of every named loss.
    pub loss: f64,
    /// Every loss by mmseg's name (`decode.loss_ce`, `decode.pam_cam.loss_ce`,
    /// `decode.loss_se`, `aux.loss_ce`, ...), weights applied.
    pub losses: BTreeMap<String, f64>,
    /// The decode head's losses summed (`decode.*`).
    pub loss_decode: f64,
    /// The auxiliary head's losses summed (`aux.*`).
    pub loss_aux: f64,
}

/// The result of [`crate::Trainer::run`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Iterations done in total.
    pub iterations: usize,
    /// Loss of the last iteration.
    pub final_loss: f64,
    /// Iterations per second over this session.
    pub iters_per_sec: f64,
    /// The final evaluation.
    pub eval: EvalResult,
    /// The final weights.
    pub model_path: PathBuf,
}

/// Sums the values of one forward pass into `acc` (per name), returning the total's value.
pub(crate) fn accumulate(
    acc: &mut BTreeMap<String, f64>,
    losses: &NamedLosses,
) -> TrainResult<f64> {
    for (name, v) in &losses.items {
        *acc.entry(name.clone()).or_default() += v.to_scalar::<f32>()? as f64;
    }
    Ok(losses.total.to_scalar::<f32>()? as f64)
}

impl IterLosses {
    /// The record of iteration `iter`: `total` and `named` are sums over `n` passes.
    pub(crate) fn new(
        iter: usize,
        lr: f64,
        total: f64,
        named: BTreeMap<String, f64>,
        n: usize,
    ) -> Self {
        let n = n.max(1) as f64;
        let losses: BTreeMap<String, f64> = named.into_iter().map(|(k, v)| (k, v / n)).collect();
        let head_sum = |p: &str| {
            losses
                .iter()
                .filter(|(k, _)| k.starts_with(p))
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        Self {
            iter,
            lr,
            loss: total / n,
            loss_decode: head_sum("decode."),
            loss_aux: head_sum("aux."),
            losses,
        }
    }
}

/// Loss sums since the last log record.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Interval {
    pub(crate) loss: f64,
    pub(crate) decode: f64,
    pub(crate) aux: f64,
    pub(crate) named: BTreeMap<String, f64>,
    pub(crate) count: usize,
}

impl Interval {
    /// Adds an iteration.
    pub(crate) fn add(&mut self, r: &IterLosses) {
        self.loss += r.loss;
        self.decode += r.loss_decode;
        self.aux += r.loss_aux;
        for (k, v) in &r.losses {
            *self.named.entry(k.clone()).or_default() += v;
        }
        self.count += 1;
    }

    /// The log record's loss fields: the interval's means of the total (`loss`), of each
    /// named loss, and of each head's sum (`loss_decode`, `loss_aux`).
    pub(crate) fn means(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = self.count.max(1) as f64;
        let mut m = serde_json::Map::new();
        m.insert("loss".into(), (self.loss / c).into());
        for (k, v) in &self.named {
            m.insert(k.clone(), (v / c).into());
        }
        m.insert("loss_decode".into(), (self.decode / c).into());
        m.insert("loss_aux".into(), (self.aux / c).into());
        m
    }

    /// The sums as f64 bit patterns (exact through JSON) and the count.
    pub(crate) fn to_state(&self) -> IntervalState {
        IntervalState {
            interval_bits: [
                self.loss.to_bits(),
                self.decode.to_bits(),
                self.aux.to_bits(),
            ],
            interval_named_bits: Some(
                self.named
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_bits()))
                    .collect(),
            ),
            interval_count: self.count,
        }
    }

    /// The interval a checkpoint stored. Checkpoints of segkit-train before named losses
    /// have no per-name sums; their decode / auxiliary sums were the decode head's
    /// cross-entropy and the weighted auxiliary cross-entropy, which are `decode.loss_ce` and
    /// `aux.loss_ce` when those are the run's only losses. Otherwise (DANet, EncNet, custom
    /// losses) an interval that had begun cannot be continued exactly: an error.
    pub(crate) fn from_state(s: &IntervalState, names: &[String]) -> Result<Self, String> {
        let f = f64::from_bits;
        let [loss, decode, aux] = s.interval_bits;
        let named = match &s.interval_named_bits {
            Some(m) => m.iter().map(|(k, v)| (k.clone(), f(*v))).collect(),
            None if s.interval_count == 0 => BTreeMap::new(),
            None => {
                let old = ["decode.loss_ce", "aux.loss_ce"];
                if !names.iter().all(|n| old.contains(&n.as_str())) {
                    return Err(format!(
                        "it was written by an older segkit-train that logged only the decode and \
                         auxiliary cross-entropies, {} iteration(s) into a log interval; this \
                         model trains with {}, so that interval cannot be continued exactly \
                         (resume from a checkpoint written at a multiple of log_interval, or \
                         start afresh)",
                        s.interval_count,
                        names.join(", ")
                    ));
                }
                let mut m = BTreeMap::new();
                for (n, v) in [("decode.loss_ce", decode), ("aux.loss_ce", aux)] {
                    if names.iter().any(|k| k == n) {
                        m.insert(n.to_string(), f(v));
                    }
                }
                m
            }
        };
        Ok(Self {
            loss: f(loss),
            decode: f(decode),
            aux: f(aux),
            named,
            count: s.interval_count,
        })
    }
}

/// The interval part of a checkpoint's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IntervalState {
    /// The sums of the total, the decode losses and the auxiliary losses as bit patterns.
    pub(crate) interval_bits: [u64; 3],
    /// The sums of each named loss as bit patterns (absent in older checkpoints).
    #[serde(default)]
    pub(crate) interval_named_bits: Option<BTreeMap<String, u64>>,
    /// Iterations in the interval.
    pub(crate) interval_count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn state_roundtrips_bit_for_bit() {
        let mut i = Interval::default();
        let r = IterLosses::new(
            3,
            0.01,
            0.1 + 0.2,
            [
                ("decode.loss_ce".to_string(), 0.1),
                ("aux.loss_ce".into(), 0.2),
            ]
            .into_iter()
            .collect(),
            1,
        );
        i.add(&r);
        i.add(&r);
        let j = serde_json::to_string(&i.to_state()).unwrap();
        let s: IntervalState = serde_json::from_str(&j).unwrap();
        assert_eq!(Interval::from_state(&s, &[]).unwrap(), i);
        assert_eq!(i.means()["decode.loss_ce"], 0.1);
    }

    #[test]
    fn old_checkpoints_continue_or_fail_clearly() {
        let old: IntervalState = serde_json::from_str(
            r#"{"interval_bits": [4607182418800017408, 4602678819172646912, 4598175219545276416],
                "interval_count": 2}"#,
        )
        .unwrap();
        let i = Interval::from_state(&old, &names(&["decode.loss_ce", "aux.loss_ce"])).unwrap();
        assert_eq!(i.named["decode.loss_ce"], 0.5);
        assert_eq!(i.named["aux.loss_ce"], 0.25);
        let e = Interval::from_state(&old, &names(&["decode.pam_cam.loss_ce"])).unwrap_err();
        assert!(e.contains("older segkit-train"), "{e}");
        let fresh = IntervalState {
            interval_count: 0,
            ..old
        };
        assert!(Interval::from_state(&fresh, &names(&["decode.loss_se"])).is_ok());
    }
}
