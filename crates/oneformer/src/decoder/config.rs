//! [`TransformerDecoderConfig`]: the sizes that are the transformer decoder's own, and the
//! checks of the pixel decoder's [`FeatureSpec`]s it is built from.

use segkit_core::FeatureSpec;

use super::NUM_FEATURE_LEVELS;
use crate::{Error, Result};

/// Configuration of OneFormer's transformer part, with transformers' `OneFormerConfig` field
/// names (unknown fields of an HF config.json are ignored; missing ones take the
/// oneformer_ade20k_swin_tiny values).
///
/// The channels of the decoder's inputs are not configured here: they come from the pixel
/// decoder's output [`FeatureSpec`]s ([`TransformerDecoderConfig::input_dims`]). HF's
/// `conv_dim` / `mask_dim`, when a config states them, are kept as declarations that must
/// agree with those specs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TransformerDecoderConfig {
    /// Number of object queries `N`, the task token's slot included. 150 (250 for Swin-L).
    pub num_queries: usize,
    /// Width `C` of the queries and of the attention layers. 256.
    pub hidden_dim: usize,
    /// Declared channels of the pixel decoder's multi-scale features (HF's `conv_dim`), or
    /// `None`. The decoder takes the channels from the input specs; a declared value that
    /// differs is an error ([`Error::SpecMismatch`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_dim: Option<usize>,
    /// Declared channels of the per-pixel mask embeddings (HF's `mask_dim`), or `None`. The
    /// decoder takes them from the mask-feature spec; a declared value that differs is an
    /// error ([`Error::SpecMismatch`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_dim: Option<usize>,
    /// Number of classes `K` (without the "no object" class); HF derives it from `id2label`.
    pub num_labels: usize,
    /// Attention heads in every attention layer. 8.
    pub num_attention_heads: usize,
    /// Hidden width of the feed-forward networks. 2048.
    pub dim_feedforward: usize,
    /// `DEC_LAYERS`: the prediction on the initial queries plus `decoder_layers - 1`
    /// masked-attention layers. 10.
    pub decoder_layers: usize,
    /// Layers of the query transformer. 2.
    pub query_dec_layers: usize,
    /// Pre-norm (`true`) or post-norm (`false`, the checkpoints) transformer layers.
    pub pre_norm: bool,
    /// Layer-normalise the task token (`decoder_norm`) and initialise the query transformer's
    /// queries with it. `true`.
    pub use_task_norm: bool,
    /// HF's flag to add 1x1 input projections even when the feature channels equal
    /// `hidden_dim`; HF keeps those projections in a plain Python list (their weights are
    /// never saved), so only `false` with feature channels `== hidden_dim` describes a
    /// loadable checkpoint.
    pub enforce_input_proj: bool,
    /// Dropout of the query transformer, applied only with `train = true`. 0.1.
    pub dropout: f64,
    /// Epsilon of every LayerNorm. 1e-5.
    pub layer_norm_eps: f64,
    /// Length of the tokenised task string (input width of the task MLP). 77.
    pub task_seq_len: usize,
}

impl Default for TransformerDecoderConfig {
    fn default() -> Self {
        Self::oneformer_ade20k_swin_tiny()
    }
}

/// The channel counts a [`super::TransformerDecoder`] takes from its input specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderInputDims {
    /// Channels of the mask features (HF's `mask_dim`): the input of the query projection and
    /// the output width of the mask-embedding MLP.
    pub mask_dim: usize,
    /// Channels of each multi-scale level (HF's `conv_dim`), equal to `hidden_dim`.
    pub level_dim: usize,
}

impl TransformerDecoderConfig {
    /// shi-labs/oneformer_ade20k_swin_tiny: 150 queries, 150 classes, width 256, 8 heads, FFN
    /// 2048, 10 decoder layers, 2 query-transformer layers, post-norm.
    pub fn oneformer_ade20k_swin_tiny() -> Self {
        Self {
            num_queries: 150,
            hidden_dim: 256,
            conv_dim: None,
            mask_dim: None,
            num_labels: 150,
            num_attention_heads: 8,
            dim_feedforward: 2048,
            decoder_layers: 10,
            query_dec_layers: 2,
            pre_norm: false,
            use_task_norm: true,
            enforce_input_proj: false,
            dropout: 0.1,
            layer_norm_eps: 1e-5,
            task_seq_len: 77,
        }
    }

    /// Checks that the decoder's own sizes describe a network HF can build and save.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("transformer decoder: {m}")));
        if self.num_queries < 2
            || self.hidden_dim == 0
            || self.num_attention_heads == 0
            || self.dim_feedforward == 0
            || self.decoder_layers == 0
            || self.task_seq_len == 0
        {
            return bad(format!(
                "sizes must be positive (num_queries >= 2): {self:?}"
            ));
        }
        if !self.hidden_dim.is_multiple_of(self.num_attention_heads)
            || !self.hidden_dim.is_multiple_of(2)
        {
            return bad(format!(
                "hidden_dim {} must be even and divisible by num_attention_heads {}",
                self.hidden_dim, self.num_attention_heads
            ));
        }
        if self.enforce_input_proj {
            return bad(
                "enforce_input_proj: transformers keeps those input projections outside the \
                 state dict, so no checkpoint can carry them"
                    .to_string(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) || self.layer_norm_eps <= 0.0 {
            return bad(format!(
                "dropout {} must be in [0, 1) and layer_norm_eps {} positive",
                self.dropout, self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// The channels the decoder takes from `inputs`, the pixel decoder's output specs in
    /// [`segkit_core::Neck::output_specs`] order: the mask features first, then the
    /// [`NUM_FEATURE_LEVELS`] multi-scale levels, finest first. Errors name the config field and
    /// the spec when a declared `conv_dim` / `mask_dim` or `hidden_dim` disagrees with them.
    pub fn input_dims(&self, inputs: &[FeatureSpec]) -> Result<DecoderInputDims> {
        self.validate()?;
        let (mask, levels) = match inputs.split_first() {
            Some((m, l)) if l.len() == NUM_FEATURE_LEVELS => (m, l),
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "transformer decoder: expects the pixel decoder's {} output specs (mask \
                     features, then {NUM_FEATURE_LEVELS} levels finest first), got {inputs:?}",
                    NUM_FEATURE_LEVELS + 1
                )))
            }
        };
        if levels.windows(2).any(|w| w[1].stride <= w[0].stride) || levels[0].stride <= mask.stride
        {
            return Err(Error::InvalidConfig(format!(
                "transformer decoder: input strides must increase (mask features, then the levels \
                 finest first), got {:?}",
                inputs.iter().map(|s| s.stride).collect::<Vec<_>>()
            )));
        }
        let mismatch = |field: &'static str, declared: usize, spec: &FeatureSpec, what: &str| {
            Error::SpecMismatch {
                component: "transformer decoder",
                field,
                declared,
                spec: format!("the pixel decoder's {what} (stride {})", spec.stride),
                channels: spec.channels,
            }
        };
        if let Some(d) = self.mask_dim.filter(|&d| d != mask.channels) {
            return Err(mismatch("mask_dim", d, mask, "mask features"));
        }
        for l in levels {
            if let Some(d) = self.conv_dim.filter(|&d| d != l.channels) {
                return Err(mismatch("conv_dim", d, l, "multi-scale level"));
            }
            // No input projections (see `enforce_input_proj`): the levels are the memories.
            if l.channels != self.hidden_dim {
                return Err(mismatch(
                    "hidden_dim",
                    self.hidden_dim,
                    l,
                    "multi-scale level",
                ));
            }
        }
        // HF's `query_input_projection` is `Conv2d(conv_dim, hidden_dim, 1)` applied to the mask
        // features, so a checkpoint exists only when the two agree.
        if mask.channels != levels[0].channels {
            return Err(Error::InvalidConfig(format!(
                "transformer decoder: the mask features have {} channels and the multi-scale \
                 levels {}; transformers' query projection (conv_dim -> hidden_dim, applied to \
                 the mask features) needs them equal",
                mask.channels, levels[0].channels
            )));
        }
        Ok(DecoderInputDims {
            mask_dim: mask.channels,
            level_dim: levels[0].channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> TransformerDecoderConfig {
        TransformerDecoderConfig {
            hidden_dim: 32,
            num_attention_heads: 4,
            ..TransformerDecoderConfig::oneformer_ade20k_swin_tiny()
        }
    }

    fn specs(mask: usize, level: usize) -> Vec<FeatureSpec> {
        vec![
            FeatureSpec::new(mask, 4),
            FeatureSpec::new(level, 8),
            FeatureSpec::new(level, 16),
            FeatureSpec::new(level, 32),
        ]
    }

    #[test]
    fn dims_come_from_the_specs() {
        let d = small().input_dims(&specs(32, 32)).unwrap();
        assert_eq!(
            d,
            DecoderInputDims {
                mask_dim: 32,
                level_dim: 32
            }
        );
        // Declarations that agree with the specs are accepted.
        let declared = TransformerDecoderConfig {
            conv_dim: Some(32),
            mask_dim: Some(32),
            ..small()
        };
        assert_eq!(declared.input_dims(&specs(32, 32)).unwrap(), d);
    }

    #[test]
    fn mismatches_name_the_field_and_the_spec() {
        let c = TransformerDecoderConfig {
            mask_dim: Some(64),
            ..small()
        };
        let e = c.input_dims(&specs(32, 32)).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::SpecMismatch {
                    component: "transformer decoder",
                    field: "mask_dim",
                    declared: 64,
                    channels: 32,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("mask_dim") && msg.contains("64") && msg.contains("32"));
        assert!(msg.contains("mask features (stride 4)"), "{msg}");

        let c = TransformerDecoderConfig {
            conv_dim: Some(16),
            ..small()
        };
        assert!(matches!(
            c.input_dims(&specs(32, 32)),
            Err(Error::SpecMismatch {
                component: "transformer decoder",
                field: "conv_dim",
                declared: 16,
                channels: 32,
                ..
            })
        ));
        // Levels wider than the queries would need input projections no checkpoint has.
        let e = small().input_dims(&specs(64, 64)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::SpecMismatch {
                    component: "transformer decoder",
                    field: "hidden_dim",
                    declared: 32,
                    channels: 64,
                    ..
                }
            ),
            "{e:?}"
        );
        // HF's query projection takes conv_dim channels but reads the mask features.
        assert!(matches!(
            small().input_dims(&specs(16, 32)),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn spec_count_and_order_are_checked() {
        let s = specs(32, 32);
        assert!(matches!(
            small().input_dims(&s[..3]),
            Err(Error::InvalidConfig(_))
        ));
        // Coarsest first (HF's tensor order) is not the specs' order.
        let mut rev = s.clone();
        rev[1..].reverse();
        assert!(matches!(
            small().input_dims(&rev),
            Err(Error::InvalidConfig(_))
        ));
        let bad = TransformerDecoderConfig {
            enforce_input_proj: true,
            ..small()
        };
        assert!(matches!(bad.input_dims(&s), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn hf_fields_map_and_derived_dims_stay_declared() {
        let c: TransformerDecoderConfig = serde_json::from_str(
            r#"{"hidden_dim": 32, "num_attention_heads": 4, "conv_dim": 32, "mask_dim": 32,
                "num_queries": 20, "model_type": "oneformer"}"#,
        )
        .unwrap();
        assert_eq!(
            (c.conv_dim, c.mask_dim, c.num_queries),
            (Some(32), Some(32), 20)
        );
        // segkit's own configs leave them out.
        let j = serde_json::to_value(TransformerDecoderConfig::default()).unwrap();
        assert!(j.get("conv_dim").is_none() && j.get("mask_dim").is_none());
    }
}
