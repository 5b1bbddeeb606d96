//! Gated-SCNN (Takikawa et al., "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation",
//! ICCV 2019), assembled as the official code's `network/gscnn.py` (nv-tlabs/GSCNN) wires it:
//! a regular stream (WideResNet38-A2, or a dilated ResNet-50/101 at output stride 8), the shape
//! stream with three gated convolutions, the fusion of its edge map with a Canny map, an ASPP
//! with an edge branch and the DeepLabV3+-style decoder (parts in `segkit_heads::gscnn`).
//!
//! # Contract for training and `segkit dump` (stable names)
//! - [`Gscnn::new`]`(cfg: &GscnnConfig, vb)`; [`GscnnConfig`] has `backbone` (`wrn38`,
//!   `resnet50-d8`, `resnet101-d8`), `num_classes`, `canny` (`as_released`: the normalised
//!   tensor cast to uint8 as the official code does, or `image8bit`: Canny on the 8-bit image
//!   recovered with `mean` / `std`) and `shape_stream` (`false`: regular stream + ASPP without
//!   the edge branch, no `edge` output — the with/without comparison).
//! - [`Gscnn::forward_t`]`(x, canny: Option<&Tensor>, train) -> GscnnOutput`: `x` is the
//!   normalised `N x 3 x H x W` batch; `canny` an `N x 1 x H x W` map with values 0 / 255 (as
//!   `cv2.Canny` returns them, not rescaled); `None` computes it from `x` per `cfg.canny`.
//! - [`GscnnOutput`]: `seg` (`N x K x H x W` logits at input size, before softmax), `edge`
//!   (`Option`, `N x 1 x H x W`, the shape stream's `edge_out`, already sigmoided),
//!   `alphas` (`Option<[Tensor; 3]>`, the gates' `N x 1 x H x W` attention maps).
//! - `Model::forward_named` returns, in this order: `seg`, then with the shape stream
//!   `edge`, `alpha1`, `alpha2`, `alpha3`.
//!
//! Checkpoint keys are the official module's state-dict keys (`mod1.conv1.weight`,
//! `mod2.block1.bn1.0.weight`, `gate1._gate_conv.0.weight`, `aspp.edge_conv.0.weight`,
//! `final_seg.6.weight`, ...); a released checkpoint (`{state_dict, optimizer, epoch,
//! mean_iu}` with `module.`-prefixed keys) is read by [`checkpoint`].
