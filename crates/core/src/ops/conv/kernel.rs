//! Packed f32 GEMM building blocks: `C[m x n] (+)= A[m x k] * B[k x n]`, BLIS style.
//!
//! - `A` (the weights, `m` = output channels) is packed once per call into [`MR`]-row panels,
//!   one run of panels per block of `k` ([`PackedA`]).
//! - `B` (pixels) is packed by the caller into [`NR`]-column micro-panels, `kc x NR` each, so
//!   that im2col (or a Winograd input transform) writes straight into the GEMM's layout.
//! - The microkernel keeps an `MR x NR` = 6 x 16 tile of `C` in 12 AVX2 registers. With
//!   AVX-512F it computes two adjacent micro-panels at once, a 6 x 32 tile in 12 zmm registers
//!   (12 independent FMA chains, as the AVX2 kernel; one 16-lane register per panel row, so
//!   half the instructions per flop); other CPUs get a portable version of the same loop.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::act::Simd;

/// Rows of `C` per microkernel tile (output channels).
pub(super) const MR: usize = 6;
/// Columns of `C` per microkernel tile (pixels or Winograd tiles).
pub(super) const NR: usize = 16;
/// Greatest depth of one packed block of `k`.
const KC: usize = 256;
/// Rows of `A` per L2-resident block.
pub(super) const MC: usize = 144;

/// Depth of the blocks that `k` is cut into: at most [`KC`], and as even as possible (a short
/// last block would pay the loads and stores of `C` for little work).
#[inline]
pub(super) fn block_depth(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).max(1)
}

/// Most floats of packed-weight buffers each thread keeps for reuse (8 MiB). At 24 MiB the
/// pool held ~25 MB more between layers of a ResNet-50 forward at 512 x 512 (fwd MB 80 -> 55
/// at 8 MiB) and bought no measurable time there, in PSPNet or in the training steps
/// (docs/PERFORMANCE.md, ninth section).
const POOL_MAX: usize = 2 << 20;

thread_local! {
    /// Buffers of dropped [`PackedA`]s, reused by the next ones (packing a layer's weights into
    /// fresh memory would otherwise page-fault on every call).
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty vector with room for `len` floats, from this thread's pool if it has one.
fn pooled(len: usize) -> Vec<f32> {
    let v = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let best = (0..p.len())
            .filter(|&i| p[i].capacity() >= len)
            .min_by_key(|&i| p[i].capacity())?;
        Some(p.swap_remove(best))
    });
    match v {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(len),
    }
}

/// Gives `v` back to this thread's pool, dropping the largest buffers beyond [`POOL_MAX`].
fn unpool(v: Vec<f32>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.push(v);
        while p.iter().map(Vec::capacity).sum::<usize>() > POOL_MAX {
            let Some(i) = (0..p.len()).max_by_key(|&i| p[i].capacity()) else {
                break;
            };
            p.swap_remove(i);
        }
    });
}

/// One packing task: depth `k0`, panel `ir`, and that panel's run in every matrix.
type PanelTask<'a, const N: usize> = (usize, usize, [&'a mut [MaybeUninit<f32>]; N]);

/// `A` (`m x k`, row-major) packed into [`MR`]-row panels per block of [`block_depth`],
/// zero-padded to a multiple of [`MR`] rows.
pub(super) struct PackedA {
    data: Vec<f32>,
    /// `m` rounded up to a multiple of [`MR`].
    mpad: usize,
    /// Rows of `A`.
    pub(super) m: usize,
    /// Depth of `A`.
    pub(super) k: usize,
}

impl Drop for PackedA {
    fn drop(&mut self) {
        unpool(std::mem::take(&mut self.data));
    }
}

impl PackedA {
    /// Packs `m` contiguous rows of `k` elements, row `r` multiplied by `scale[r]` when given
    /// (a BatchNorm folded into the weights as they are packed, with no folded copy; each
    /// product rounded once from f64, as a folded copy would hold it).
    pub(super) fn new_scaled(a: &[f32], m: usize, k: usize, scale: Option<&[f64]>) -> Self {
        let [packed] = Self::new_multi_rows::<1>(m, k, |r, k0, out| {
            let src = &a[r * k + k0..][..out.len()];
            match scale {
                Some(s) => {
                    for (o, &v) in out.iter_mut().zip(src) {
                        *o = [(v as f64 * s[r]) as f32];
                    }
                }
                None => {
                    for (o, &v) in out.iter_mut().zip(src) {
                        *o = [v];
                    }
                }
            }
        });
        packed
    }

    /// Packs `N` matrices of `m x k` at once (for transforms that produce several matrices from
    /// one source element, as Winograd's 16 from one 3x3 filter), a run of one row at a time:
    /// `f(row, col0, out)` fills `out[j]` with the `N` matrices' elements `(row, col0 + j)`, so
    /// that `f` reads its source row sequentially (a run is one block of [`block_depth`]
    /// columns).
    pub(super) fn new_multi_rows<const N: usize>(
        m: usize,
        k: usize,
        f: impl Fn(usize, usize, &mut [[f32; N]]) + Sync,
    ) -> [Self; N] {
        let mpad = m.div_ceil(MR) * MR;
        let kb = block_depth(k);
        let mut datas: [Vec<f32>; N] = std::array::from_fn(|_| pooled(mpad * k));
        {
            // One task per (k block, panel), writing its kc x MR run of every matrix,
            // padding rows included, so that the whole buffers end up initialised.
            let mut rests: Vec<&mut [MaybeUninit<f32>]> = datas
                .iter_mut()
                .map(|d| &mut d.spare_capacity_mut()[..mpad * k])
                .collect();
            let mut tasks: Vec<PanelTask<'_, N>> = Vec::new();
            for k0 in (0..k).step_by(kb) {
                let kc = kb.min(k - k0);
                for ir in 0..mpad / MR {
                    let panels: [&mut [MaybeUninit<f32>]; N] = std::array::from_fn(|x| {
                        let (head, tail) = std::mem::take(&mut rests[x]).split_at_mut(kc * MR);
                        rests[x] = tail;
                        head
                    });
                    tasks.push((k0, ir, panels));
                }
            }
            let fill = |(k0, ir, mut panels): PanelTask<'_, N>| {
                let kc = panels[0].len() / MR;
                let mut run = vec![[0f32; N]; kc];
                // Row by row: the source run of each row is produced at once, then each
                // matrix's panel takes its column of the run.
                for r in 0..MR {
                    let row = ir * MR + r;
                    if row < m {
                        f(row, k0, &mut run);
                    } else {
                        run.fill([0.0; N]);
                    }
                    for (x, panel) in panels.iter_mut().enumerate() {
                        for (kk, v) in run.iter().enumerate() {
                            panel[kk * MR + r].write(v[x]);
                        }
                    }
                }
            };
            if N * mpad * k >= 1 << 16 {
                tasks.into_par_iter().for_each(fill);
            } else {
                tasks.into_iter().for_each(fill);
            }
        }
        datas.map(|mut data| {
            // SAFETY: the tasks above wrote every one of the mpad * k elements.
            unsafe { data.set_len(mpad * k) };
            Self { data, mpad, m, k }
        })
    }

    /// The `kc x MR` panel of rows `ir * MR..` in the block starting at depth `k0`.
    #[inline]
    fn panel(&self, k0: usize, ir: usize) -> &[f32] {
        let kc = block_depth(self.k).min(self.k - k0);
        &self.data[k0 * self.mpad + ir * kc * MR..][..kc * MR]
    }
}

/// Distance between two packed `B` micro-panels of depth `kc`: one row more than they hold, so
/// that a power-of-two `kc` does not put every panel in the same cache sets.
#[inline]
pub(super) fn panel_stride(kc: usize) -> usize {
    (kc + 1) * NR
}

/// Floats needed for one packed `B` block of `kc x np`.
#[inline]
pub(super) fn packed_b_len(kc: usize, np: usize) -> usize {
    np.div_ceil(NR) * panel_stride(kc)
}

/// A raw pointer to `C` that rayon tasks writing disjoint tiles may share.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: tasks only write disjoint regions, as documented where an `OutPtr` is shared.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    #[inline]
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `C[o0..o1, 0..np] (+)= A[o0..o1, k0..k0+kc] * B`, with `B` one packed `kc x np` block
/// (micro-panels `ps` apart) and `C` at `c` with row stride `ldc` (row `o0` first).
/// Accumulates into `C` when `acc` (a later block of `k`, or a later term of a sum of GEMMs
/// such as `dilated`'s taps), stores otherwise.
///
/// # Safety
/// `c` must be valid for reads and writes of rows `0..o1 - o0` of `np` elements, `ldc` apart,
/// and not accessed concurrently by anyone else; `o0` must be a multiple of [`MR`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_block(
    a: &PackedA,
    o0: usize,
    o1: usize,
    (k0, acc): (usize, bool),
    b: &[f32],
    ps: usize,
    np: usize,
    c: *mut f32,
    ldc: usize,
    simd: Simd,
) {
    let avx2 = simd.avx2();
    let kc = block_depth(a.k).min(a.k - k0);
    debug_assert!(o0.is_multiple_of(MR) && o1 <= a.m && ps >= kc * NR);
    #[cfg(target_arch = "x86_64")]
    if simd.avx512() {
        // SAFETY: forwarded from the caller; the CPU has AVX-512F (`simd`).
        return unsafe { x86::gemm_block_avx512(a, o0, o1, k0, kc, b, ps, np, c, ldc, acc) };
    }
    for ic in (o0..o1).step_by(MC) {
        let ic1 = (ic + MC).min(o1);
        for jr in 0..np.div_ceil(NR) {
            let bp = &b[jr * ps..][..kc * NR];
            let cols = NR.min(np - jr * NR);
            for r0 in (ic..ic1).step_by(MR) {
                let rows = MR.min(ic1 - r0);
                let ap = a.panel(k0, r0 / MR);
                // SAFETY: the tile lies inside C's rows 0..o1-o0 and columns 0..np (caller).
                let ct = unsafe { c.add((r0 - o0) * ldc + jr * NR) };
                // SAFETY: ap and bp hold kc x MR and kc x NR elements; ct as above.
                unsafe { ukernel(kc, ap, bp, ct, ldc, acc, rows, cols, avx2) };
            }
        }
    }
}

/// One `MR x NR` tile: `c[r * ldc + j] (+)= sum_kk a[kk * MR + r] * b[kk * NR + j]`, for
/// `r < rows`, `j < cols`.
///
/// # Safety
/// `c` valid for the tile's `rows x cols` elements; `avx2` only if the CPU has AVX2 and FMA.
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn ukernel(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    acc: bool,
    rows: usize,
    cols: usize,
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: forwarded from the caller.
        return unsafe { x86::ukernel_avx2(kc, a, b, c, ldc, acc, rows, cols) };
    }
    let _ = avx2;
    let mut t = [[0f32; NR]; MR];
    for (ak, bk) in a[..kc * MR]
        .chunks_exact(MR)
        .zip(b[..kc * NR].chunks_exact(NR))
    {
        for r in 0..MR {
            for j in 0..NR {
                t[r][j] += ak[r] * bk[j];
            }
        }
    }
    for (r, tr) in t.iter().enumerate().take(rows) {
        for (j, &v) in tr.iter().enumerate().take(cols) {
            // SAFETY: inside the tile (caller).
            let p = unsafe { c.add(r * ldc + j) };
            // SAFETY: as above.
            unsafe { *p = if acc { *p + v } else { v } };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::{PackedA, MC, MR, NR};

    /// [`super::gemm_block`] with AVX-512F: the same loops, with full pairs of micro-panels
    /// computed together ([`tile512`] with `P = 2`) and a last single or partial panel with
    /// `P = 1`.
    ///
    /// # Safety
    /// As [`super::gemm_block`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_block_avx512(
        a: &PackedA,
        o0: usize,
        o1: usize,
        k0: usize,
        kc: usize,
        b: &[f32],
        ps: usize,
        np: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        for_each_tile512(o0, o1, np, |r0, rows, jr, pair, cols| {
            let ap = a.panel(k0, r0 / MR);
            // SAFETY: the tile lies inside C's rows 0..o1-o0 and columns 0..np (caller); the
            // panels hold kc x MR and kc x NR elements, `ps` apart.
            unsafe {
                let ct = c.add((r0 - o0) * ldc + jr * NR);
                let bp = b[jr * ps..].as_ptr();
                if pair {
                    debug_assert!(b.len() >= (jr + 1) * ps + kc * NR);
                    rows512::<2>(kc, ap, bp, ps, ct, ldc, acc, rows, NR);
                } else {
                    debug_assert!(b.len() >= jr * ps + kc * NR);
                    rows512::<1>(kc, ap, bp, ps, ct, ldc, acc, rows, cols);
                }
            }
        });
    }

    /// The tiles of `C[o0..o1, 0..np]` in the AVX-512 GEMM blocks' order: blocks of `MC` rows,
    /// then pairs of full-width micro-panels (a single or partial last one), then `MR`-row
    /// tiles; `f(r0, rows, jr, pair, cols)` with `cols` the width of a single panel.
    #[inline(always)]
    pub(in crate::ops::conv) fn for_each_tile512(
        o0: usize,
        o1: usize,
        np: usize,
        mut f: impl FnMut(usize, usize, usize, bool, usize),
    ) {
        let panels = np.div_ceil(NR);
        for ic in (o0..o1).step_by(MC) {
            let ic1 = (ic + MC).min(o1);
            let mut jr = 0;
            while jr < panels {
                // A pair when both panels are full width.
                let pair = jr + 1 < panels && np >= (jr + 2) * NR;
                let cols = NR.min(np - jr * NR);
                for r0 in (ic..ic1).step_by(MR) {
                    f(r0, MR.min(ic1 - r0), jr, pair, cols);
                }
                jr += if pair { 2 } else { 1 };
            }
        }
    }

    /// Dispatches `rows <= MR` to [`tile512`].
    ///
    /// # Safety
    /// See [`tile512`].
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows512<const P: usize>(
        kc: usize,
        a: &[f32],
        b: *const f32,
        ps: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
        rows: usize,
        cols: usize,
    ) {
        // SAFETY: forwarded; each instance computes only the rows it is given.
        unsafe {
            match rows {
                6 => tile512::<6, P>(kc, a, b, ps, c, ldc, acc, cols),
                5 => tile512::<5, P>(kc, a, b, ps, c, ldc, acc, cols),
                4 => tile512::<4, P>(kc, a, b, ps, c, ldc, acc, cols),
                3 => tile512::<3, P>(kc, a, b, ps, c, ldc, acc, cols),
                2 => tile512::<2, P>(kc, a, b, ps, c, ldc, acc, cols),
                _ => tile512::<1, P>(kc, a, b, ps, c, ldc, acc, cols),
            }
        }
    }

    /// `R x (P * NR)` tile: `P` adjacent micro-panels of `B` (`ps` apart, `kc x NR` each)
    /// times one `kc x MR` panel of `A`, one zmm accumulator per row and panel. With `P = 1`
    /// only the first `cols` columns are written (masked store); with `P = 2` both panels are
    /// full width.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` holds `kc * MR` elements, `b` `P` panels of `kc * NR`
    /// elements `ps` apart; `c` is valid for the `R x (P * NR)` (or `R x cols`) tile with row
    /// stride `ldc`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile512<const R: usize, const P: usize>(
        kc: usize,
        a: &[f32],
        b: *const f32,
        ps: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
        cols: usize,
    ) {
        assert!(R <= MR && (1..=2).contains(&P) && a.len() >= kc * MR);
        let mut t = [[_mm512_setzero_ps(); P]; R];
        let mut pa = a.as_ptr();
        let mut pb: [*const f32; P] = std::array::from_fn(|p| b.wrapping_add(p * ps));
        for _ in 0..kc {
            // SAFETY: kc steps of MR (a) and NR (each b panel) elements stay inside them.
            unsafe {
                let bv: [__m512; P] = std::array::from_fn(|p| _mm512_loadu_ps(pb[p]));
                for (r, tr) in t.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*pa.add(r));
                    for (acc, &bp) in tr.iter_mut().zip(&bv) {
                        *acc = _mm512_fmadd_ps(av, bp, *acc);
                    }
                }
                pa = pa.add(MR);
                for q in pb.iter_mut() {
                    *q = q.add(NR);
                }
            }
        }
        // SAFETY: forwarded (the tile lies inside C).
        unsafe { store_rows512(&t, c, ldc, acc, cols) }
    }

    /// Stores (or with `acc` adds) the accumulators `t` as rows of `C` (row stride `ldc`): `P`
    /// panels of `NR` columns each, only the first `cols` columns when `P = 1`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `c` is valid for `t.len()` rows of the (masked) tile.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::ops::conv) unsafe fn store_rows512<const P: usize>(
        t: &[[__m512; P]],
        c: *mut f32,
        ldc: usize,
        acc: bool,
        cols: usize,
    ) {
        let mask: __mmask16 = if P == 1 && cols < NR {
            ((1u32 << cols) - 1) as __mmask16
        } else {
            0xffff
        };
        for (r, tr) in t.iter().enumerate() {
            for (p, &v) in tr.iter().enumerate() {
                // SAFETY: the (masked) row segment is inside C (caller).
                unsafe {
                    let dst = c.add(r * ldc + p * NR);
                    let v = if acc {
                        _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst))
                    } else {
                        v
                    };
                    _mm512_mask_storeu_ps(dst, mask, v);
                }
            }
        }
    }

    /// AVX2 + FMA microkernel for a tile of `rows <= MR` rows and `cols <= NR` columns.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a`, `b` hold `kc * MR`, `kc * NR` elements; `c` is valid for
    /// the `rows x cols` tile with row stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn ukernel_avx2(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        acc: bool,
        rows: usize,
        cols: usize,
    ) {
        // SAFETY: forwarded; each instance computes only the rows it is given.
        unsafe {
            match rows {
                6 => tile::<6>(kc, a, b, c, ldc, acc, cols),
                5 => tile::<5>(kc, a, b, c, ldc, acc, cols),
                4 => tile::<4>(kc, a, b, c, ldc, acc, cols),
                3 => tile::<3>(kc, a, b, c, ldc, acc, cols),
                2 => tile::<2>(kc, a, b, c, ldc, acc, cols),
                _ => tile::<1>(kc, a, b, c, ldc, acc, cols),
            }
        }
    }

    /// `R x NR` tile (`R <= MR`), see [`ukernel_avx2`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        acc: bool,
        cols: usize,
    ) {
        assert!(R <= MR && a.len() >= kc * MR && b.len() >= kc * NR);
        let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
        let mut t0 = [_mm256_setzero_ps(); R];
        let mut t1 = [_mm256_setzero_ps(); R];
        for _ in 0..kc {
            // SAFETY: kc steps of MR (a) and NR (b) elements stay inside the slices.
            unsafe {
                let b0 = _mm256_loadu_ps(pb);
                let b1 = _mm256_loadu_ps(pb.add(8));
                for r in 0..R {
                    let av = _mm256_broadcast_ss(&*pa.add(r));
                    t0[r] = _mm256_fmadd_ps(av, b0, t0[r]);
                    t1[r] = _mm256_fmadd_ps(av, b1, t1[r]);
                }
                pa = pa.add(MR);
                pb = pb.add(NR);
            }
        }
        if cols == NR {
            for r in 0..R {
                // SAFETY: a full-width tile row is inside C (caller).
                unsafe {
                    let p = c.add(r * ldc);
                    let (mut v0, mut v1) = (t0[r], t1[r]);
                    if acc {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
                    }
                    _mm256_storeu_ps(p, v0);
                    _mm256_storeu_ps(p.add(8), v1);
                }
            }
        } else {
            let mut buf = [0f32; NR];
            for r in 0..R {
                // SAFETY: buf holds NR elements; the first `cols` of the row are inside C.
                unsafe {
                    _mm256_storeu_ps(buf.as_mut_ptr(), t0[r]);
                    _mm256_storeu_ps(buf.as_mut_ptr().add(8), t1[r]);
                    for (j, &v) in buf.iter().enumerate().take(cols) {
                        let p = c.add(r * ldc + j);
                        *p = if acc { *p + v } else { v };
                    }
                }
            }
        }
    }
}
