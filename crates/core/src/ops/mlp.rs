//! A pre-norm transformer block's feed-forward sub-layer, `x + fc2(act(fc1(layer_norm(x))))`,
//! for CPU f32 inference, in blocks of rows.
//!
//! Every step is per row, so a block of rows runs the whole sub-layer (LayerNorm, the first
//! linear layer and its activation, the second and the residual) before the next block
//! starts. The hidden activations (4x the width in Swin and most transformers) then never
//! exist at full size: Swin-T's first stage at 512 x 512 held a 25 MB hidden map per block
//! (16384 rows x 384), here at most [`HIDDEN_BLOCK`] floats (4 MiB). Each block's rows are
//! written straight into the output; the normalised rows and the hidden block live in two
//! buffers reused from block to block. The GEMMs and epilogues are [`super::linear`]'s,
//! so the values equal LayerNorm, [`super::linear_act`] and [`super::linear_residual`] run
//! one after the other.

use super::conv::Activation;
use super::layer_norm::layer_norm_rows_into;
use super::linear::gemm_rows_into;
use super::linear_epilogue::Epilogue;

/// Most hidden floats per block of rows (4 MiB).
const HIDDEN_BLOCK: usize = 1 << 20;
/// Fewest rows per block: a GEMM over fewer rows runs below the `gemm` crate's best rate.
const MIN_ROWS: usize = 256;

/// The two linear layers of the sub-layer, row-major `hidden x width` and `width x hidden`.
pub(crate) struct FeedForward<'a> {
    pub(crate) w1: &'a [f32],
    pub(crate) b1: Option<&'a [f32]>,
    pub(crate) act: Activation,
    pub(crate) w2: &'a [f32],
    pub(crate) b2: Option<&'a [f32]>,
    pub(crate) hidden: usize,
}

/// Rows per block for a hidden width of `hidden`, given `rows` rows in all.
fn block_rows(hidden: usize, rows: usize) -> usize {
    (HIDDEN_BLOCK / hidden.max(1))
        .max(MIN_ROWS)
        .min(rows)
        .max(1)
}

/// `x + fc2(act(fc1(layer_norm(x))))` over the `width`-long rows of `x`, `norm = (weight,
/// bias, eps)` of length `width`. `width` and `ff.hidden` are at least 1, `act` is not a
/// sigmoid (the epilogue has none).
pub(crate) fn norm_feed_forward_rows(
    x: &[f32],
    (nw, nb, eps): (&[f32], &[f32], f32),
    ff: &FeedForward<'_>,
) -> Vec<f32> {
    let (d, h) = (nw.len(), ff.hidden);
    let rows = x.len() / d.max(1);
    let block = block_rows(h, rows);
    let mut out: Vec<f32> = Vec::with_capacity(rows * d);
    let mut normed: Vec<f32> = Vec::with_capacity(block * d);
    let mut hidden: Vec<f32> = Vec::with_capacity(block * h);
    for (b, dst) in out.spare_capacity_mut()[..rows * d]
        .chunks_mut(block * d)
        .enumerate()
    {
        let n = dst.len() / d;
        let xs = &x[b * block * d..][..n * d];
        let y = layer_norm_rows_into(xs, nw, nb, eps, &mut normed.spare_capacity_mut()[..n * d]);
        let first = Epilogue {
            bias: ff.b1,
            act: ff.act,
            residual: None,
        };
        let hid = gemm_rows_into(
            y,
            ff.w1,
            (n, d, h),
            first,
            &mut hidden.spare_capacity_mut()[..n * h],
        );
        let second = Epilogue {
            bias: ff.b2,
            act: Activation::None,
            residual: Some(xs),
        };
        gemm_rows_into(hid, ff.w2, (n, h, d), second, dst);
    }
    // SAFETY: the blocks cover all `rows * d` elements, and `gemm_rows_into` wrote each.
    unsafe { out.set_len(rows * d) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_rows() {
        assert_eq!(block_rows(384, 16384), 2730);
        assert_eq!(block_rows(3072, 256), 256);
        assert_eq!(block_rows(3072, 100), 100);
        assert_eq!(block_rows(1 << 22, 10_000), MIN_ROWS);
        assert_eq!(block_rows(8, 0), 1);
    }
}
