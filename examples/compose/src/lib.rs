//! A worked example for teams that compose models from segkit's parts (see README.md).
//!
//! - [`compose`]: ResNet-50-D8 + JPU + DANet head and Swin-T + DANet head, as typed configs
//!   built from the parts' presets (channel counts flow through `FeatureSpec`s), as the JSON
//!   files in `configs/`, and as bare components wired by hand;
//! - [`train`]: a few optimisation steps from the reference's random initialisation
//!   (`VarMap` + `VarBuilder::from_varmap`) on segkit's bundled demo canvas, then save and
//!   reload.
//!
//! `cargo run --release -p segkit-example-compose` runs both models at full size;
//! `cargo test --release -p segkit-example-compose` runs the same steps at reduced width.

pub mod compose;
pub mod train;
