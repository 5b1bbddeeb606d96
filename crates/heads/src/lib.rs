//! segkit-heads: dense-prediction heads that map features to per-pixel class logits.
//!
//! Every head is built from the [`segkit_core::FeatureSpec`]s of the features it receives (a
//! backbone's or a neck's) and picks its input(s) the way mmseg does (`in_index`,
//! `input_transform`, see [`DecodeHeadConfig`]). Parameter names equal mmseg 1.2.2's state-dict
//! keys (`conv_seg`, ConvModule `conv` / `bn`, ...), so an mmseg checkpoint's
//! `decode_head.*` / `auxiliary_head.*` entries load under `vb.pp("decode_head")`.
//!
//! - [`fcn`]: FCN head (also the auxiliary head of most mmseg configs);
//! - [`psp`]: PSPNet's pyramid pooling head;
//! - [`danet`]: DANet's dual attention head (position + channel attention);
//! - [`aspp`]: DeepLabV3's atrous spatial pyramid pooling head;
//! - [`enc`]: EncNet's context encoding head with its SE-loss branch;
//! - [`gscnn`]: Gated-SCNN's shape stream (gated convolutions), Canny fusion, ASPP with edge
//!   branch and decoder (official nv-tlabs/GSCNN key names).
//! - [`rpn`]: Detectron's FPN region proposal network and its test-time proposals (anchors,
//!   top-k, NMS, collect and distribute to levels), as PANet's official code (`RPN.*` keys).
//! - [`panet`]: PANet's RoI heads (box head with adaptive feature pooling, mask head with
//!   fully-connected fusion, the official test-time post-processing; `Box_Head.*`, `Mask_Head.*`).
//!
//! All heads implement [`segkit_core::DecodeHead`], which returns every output by name
//! ([`segkit_core::HeadOutput`]: `logits`, plus DANet's `pam` / `cam` and EncNet's `se`); their
//! concrete `forward` methods return the same outputs as typed structs ([`DaHeadOutput`],
//! [`EncHeadOutput`]).
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod aspp;
pub mod danet;
pub mod decode_head;
pub mod enc;
pub mod fcn;
pub mod gscnn;
pub mod panet;
pub mod psp;
pub mod rpn;

pub use aspp::{AsppHead, AsppHeadConfig};
pub use danet::{DaHead, DaHeadConfig, DaHeadOutput, DA_HEAD_EXTRA_OUTPUTS};
pub use decode_head::{dropout2d, DecodeHeadConfig, InIndex, InputTransform};
pub use enc::{EncHead, EncHeadConfig, EncHeadOutput, ENC_HEAD_SE_OUTPUT};
pub use fcn::{FcnHead, FcnHeadConfig};
pub use psp::{PspHead, PspHeadConfig};
pub use rpn::{RpnConfig, RpnHead, RpnHeadOutput, RpnProposals};

/// Errors of segkit-heads: segkit-core's [`segkit_core::Error`], the one error type of segkit's
/// component crates (so a missing weight, a shape or a mis-wiring is matched the same way
/// whichever component reported it; see [`segkit_core::error`]).
pub use segkit_core::Error;

/// `Result` with segkit-heads's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T>(c: T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<T>(&j).unwrap(), c, "{j}");
    }

    #[test]
    fn presets_roundtrip_through_json() {
        roundtrip(FcnHeadConfig::fcn_r50_d8(19));
        roundtrip(FcnHeadConfig::aux_r50_d8(150));
        roundtrip(FcnHeadConfig::aux_fastfcn_r50_d32_jpu(19));
        roundtrip(PspHeadConfig::pspnet_r50_d8(19));
        roundtrip(PspHeadConfig::fastfcn_r50_d32_jpu_psp(19));
        roundtrip(DaHeadConfig::danet_r50_d8(19));
        roundtrip(AsppHeadConfig::deeplabv3_r50_d8(19));
        roundtrip(AsppHeadConfig::fastfcn_r50_d32_jpu_aspp(19));
        roundtrip(EncHeadConfig::encnet_r50_d8(19));
        roundtrip(EncHeadConfig::fastfcn_r50_d32_jpu_enc(19));
    }

    #[test]
    fn head_json_defaults_are_mmseg_class_defaults() {
        let c: FcnHeadConfig =
            serde_json::from_str(r#"{"base": {"channels": 512, "num_classes": 19}}"#).unwrap();
        assert_eq!(
            (c.num_convs, c.kernel_size, c.concat_input, c.dilation),
            (2, 3, true, 1)
        );
        let c: AsppHeadConfig =
            serde_json::from_str(r#"{"base": {"channels": 512, "num_classes": 19}}"#).unwrap();
        assert_eq!(c.dilations, [1, 6, 12, 18]);
        assert!(serde_json::from_str::<DaHeadConfig>(
            r#"{"base": {"channels": 512, "num_classes": 19}, "pam_chanels": 64}"#
        )
        .is_err());
    }
}
