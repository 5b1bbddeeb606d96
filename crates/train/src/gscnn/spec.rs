//! The training config's Gated-SCNN model (`{"type": "Gscnn", ...}`): the network (a preset
//! or an inline [`GscnnConfig`], with overrides), the losses, the edge ground truth and the
//! boundary metric.

use segkit_data::edges::EdgeTargetConfig;
use segkit_data::metrics::BoundaryTolerance;
use segkit_losses::{DualTaskGradient, JointEdgeSegLoss};
use segkit_models::gscnn::{GscnnConfig, GSCNN_PRESETS};
use segkit_models::DatasetMeta;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::TrainResult;

/// The name of [`super::demo_net`] as a preset of the training config.
pub const DEMO_PRESET: &str = "gscnn_demo_r18-w16";

/// The official evaluation's boundary thresholds (`bound_th`, fractions of the image
/// diagonal): 0.0005, 0.001875, 0.00375, 0.005.
pub const OFFICIAL_BOUNDARY_TOLERANCES: [f64; 4] = [0.0005, 0.001875, 0.00375, 0.005];

/// A Gated-SCNN in the training config.
///
/// ```json
/// {"type": "Gscnn", "preset": "gscnn_demo_r18-w16", "meta": {"classes": [...], "palette": [...]},
///  "shape_stream": true, "dual": "as_paper"}
/// ```
///
/// Exactly one of `preset` and `config`. Everything else is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GscnnSpec {
    /// A preset: `gscnn_wrn38_cityscapes`, `gscnn_r101-d8_cityscapes`, or
    /// `gscnn_demo_r18-w16` (the small network of the demo comparison, [`super::demo_net`];
    /// it needs `num_classes` or `meta`).
    #[serde(default)]
    pub preset: Option<String>,
    /// An inline network config (what `config.json` of a trained Gated-SCNN holds, without
    /// its `"type"`).
    #[serde(default)]
    pub config: Option<Box<GscnnConfig>>,
    /// Replaces the network's number of classes. Default: `meta`'s, else the network's.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// Replaces the network's `shape_stream` (`false`: the regular stream and ASPP alone,
    /// trained with the segmentation loss alone — the paper's baseline).
    #[serde(default)]
    pub shape_stream: Option<bool>,
    /// Replaces the network's class names and palette (the `custom` dataset layout takes
    /// them from here).
    #[serde(default)]
    pub meta: Option<DatasetMeta>,
    /// The dual-task loss's "gradient magnitude": `as_released` (default: the official
    /// code's, without a spatial derivative) or `as_paper`. Replaces `loss.dual.gradient`.
    #[serde(default)]
    pub dual: Option<DualTaskGradient>,
    /// Every loss setting (weights, attention threshold, class weighting, Gumbel tau).
    /// Default: the official training configuration (`JointEdgeSegLoss::gscnn`).
    #[serde(default)]
    pub loss: Option<JointEdgeSegLoss>,
    /// The edge ground truth made from each batch's labels. Default: the released radius 2.
    #[serde(default)]
    pub edge_target: Option<EdgeTargetConfig>,
    /// Boundary F-score tolerances reported at evaluation. Default: the official four
    /// ([`OFFICIAL_BOUNDARY_TOLERANCES`]).
    #[serde(default)]
    pub boundary_tolerances: Option<Vec<BoundaryTolerance>>,
}

/// A resolved Gated-SCNN training setup (what [`super::GscnnTask`] trains).
#[derive(Debug, Clone, PartialEq)]
pub struct GscnnTraining {
    /// The network.
    pub net: GscnnConfig,
    /// The losses (`num_classes` the network's).
    pub loss: JointEdgeSegLoss,
    /// The edge ground truth.
    pub edge_target: EdgeTargetConfig,
    /// Boundary F-score tolerances of the evaluation.
    pub boundary_tolerances: Vec<BoundaryTolerance>,
}

impl GscnnSpec {
    /// The network and settings this spec names; errors name the training config and the
    /// field.
    pub fn resolve(&self, cfg: &TrainConfig) -> TrainResult<GscnnTraining> {
        let net = match (&self.preset, &self.config) {
            (Some(_), Some(_)) => {
                return Err(cfg.error("`model`: give `preset` or `config`, not both"))
            }
            (None, None) => return Err(cfg.error("`model`: a Gscnn needs `preset` or `config`")),
            (None, Some(c)) => (**c).clone(),
            (Some(p), None) if p == DEMO_PRESET => {
                let k = self
                    .num_classes
                    .or(self.meta.as_ref().map(|m| m.classes.len()))
                    .ok_or_else(|| {
                        cfg.error(format!(
                            "`model.preset`: `{DEMO_PRESET}` needs `num_classes` or `meta`"
                        ))
                    })?;
                super::demo_net(k, true)?
            }
            (Some(p), None) => GscnnConfig::preset(p).map_err(|_| {
                let mut valid: Vec<&str> = GSCNN_PRESETS.to_vec();
                valid.push(DEMO_PRESET);
                cfg.error(format!(
                    "`model.preset`: unknown Gated-SCNN preset `{p}`; valid: {}",
                    valid.join(", ")
                ))
            })?,
        };
        self.resolve_config(net, cfg)
    }

    /// `net` with this spec's overrides and settings.
    pub fn resolve_config(
        &self,
        mut net: GscnnConfig,
        cfg: &TrainConfig,
    ) -> TrainResult<GscnnTraining> {
        if let Some(m) = &self.meta {
            net.meta = m.clone();
            net.num_classes = m.classes.len();
        }
        if let Some(k) = self.num_classes {
            net.num_classes = k;
        }
        if let Some(s) = self.shape_stream {
            net.shape_stream = s;
        }
        let k = net.num_classes;
        if k == 0 {
            return Err(cfg.error("`model`: a Gated-SCNN needs at least one class"));
        }
        if !net.meta.classes.is_empty() && net.meta.classes.len() != k {
            return Err(cfg.error(format!(
                "`model`: {} class names (`meta.classes`) for {k} classes",
                net.meta.classes.len()
            )));
        }
        let mut loss = self
            .loss
            .clone()
            .unwrap_or_else(|| JointEdgeSegLoss::gscnn(k));
        if loss.num_classes != k {
            return Err(cfg.error(format!(
                "`model.loss.num_classes` is {} but the network predicts {k} classes",
                loss.num_classes
            )));
        }
        if let Some(d) = self.dual {
            loss.dual.gradient = d;
        }
        let edge_target = self.edge_target.unwrap_or(EdgeTargetConfig::gscnn(k));
        if edge_target.num_classes != k
            || !(edge_target.radius.is_finite() && edge_target.radius > 0.0)
        {
            return Err(cfg.error(format!(
                "`model.edge_target`: needs num_classes {k} and a positive radius, got {} and {}",
                edge_target.num_classes, edge_target.radius
            )));
        }
        let boundary_tolerances = self.boundary_tolerances.clone().unwrap_or_else(|| {
            OFFICIAL_BOUNDARY_TOLERANCES
                .iter()
                .map(|&f| BoundaryTolerance::DiagonalFraction(f))
                .collect()
        });
        Ok(GscnnTraining {
            net,
            loss,
            edge_target,
            boundary_tolerances,
        })
    }
}
