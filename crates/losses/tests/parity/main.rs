//! Parity of segkit-losses with the PyTorch references: loss values and gradients with respect
//! to the logits (and other trainable inputs), matcher indices exactly. Fixtures:
//! `tests/parity/gen_losses.py` -> `tests/fixtures/losses/*.safetensors`.
//! Run with `--nocapture` to print every measured difference (`DIFF what max|diff| max|ref|`).

mod common;
mod cross_entropy;
mod gscnn;
mod lsap;
mod mask;
mod oneformer;
mod training;
