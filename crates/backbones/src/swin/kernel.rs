//! Fused CPU kernel for (shifted) window attention at inference.
//!
//! One pass per window and head does what the composed path does with a gather, a permute,
//! two batched matmuls, two broadcast adds, a softmax, another permute and a scatter: it reads
//! the query / key / value rows of the window's tokens straight from the `B x L x 3C` qkv
//! projection of the unpadded map (a padding token reads the projection of a zero vector, i.e.
//! the qkv bias), adds the relative position bias and the shift mask, applies the softmax, and
//! writes each token's output row to its place in the unpadded `B x L x C` map. The scores of
//! one window never leave the L1 cache. Windows are split over `candle_core::utils::
//! get_num_threads()` scoped threads. The portable version here works one query row at a
//! time; on x86-64 the register-tiled versions replace it: `kernel512.rs`'s (AVX-512F) when
//! the CPU has AVX-512F, else `kernel256.rs`'s (AVX2 + FMA) when it has those. The row version
//! compiled with AVX2 + FMA (`windows::<true>`) is kept for the tests.

use std::ops::Range;

pub(super) use segkit_core::ops::fastmath::{exp_approx, has_avx2_fma, madd};

/// Everything the kernel reads, as flat row-major slices.
pub(crate) struct WindowAttention<'a> {
    /// `B x L x 3C`: queries, keys, values without their bias (the query part already scaled
    /// by `head_dim^-1/2`).
    pub qkv: &'a [f32],
    /// `3C`: the qkv bias (query part scaled), added to every row; a padding token (a zero
    /// vector before the projection) reads the bias alone.
    pub qkv_bias: &'a [f32],
    /// `nW x N`: source token of each windowed position, `L` for padding.
    pub index: &'a [u32],
    /// `heads x N x N` relative position bias.
    pub bias: &'a [f32],
    /// `nW x N x N` shift mask, if shifted.
    pub mask: Option<&'a [f32]>,
    pub batch: usize,
    pub tokens: usize,
    pub dim: usize,
    pub heads: usize,
    pub window_area: usize,
}

impl WindowAttention<'_> {
    /// Runs the attention; returns `B x L x C`.
    pub fn run(&self) -> Vec<f32> {
        let (l, c) = (self.tokens, self.dim);
        // Not zero-filled: the kernels write every element (below).
        let len = self.batch * l * c;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let nw = self.index.len() / self.window_area;
        let jobs = self.batch * nw;
        let threads = candle_core::utils::get_num_threads().clamp(1, jobs.max(1));
        let dst = OutPtr(out.as_mut_ptr());
        let simd = has_avx2_fma();
        let avx512 = simd && segkit_core::ops::cpu_has_avx512f();
        let work = |r: Range<usize>| {
            let dst = &dst;
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: AVX-512F was detected on this CPU.
                unsafe { self.windows_avx512(r, dst) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX2 and FMA were detected on this CPU.
                unsafe { self.windows_avx2_tiled(r, dst) };
                return;
            }
            let _ = (simd, avx512);
            self.windows::<false>(r, dst)
        };
        if threads == 1 {
            work(0..jobs);
        } else {
            let per = jobs.div_ceil(threads);
            std::thread::scope(|s| {
                for t in 1..threads {
                    let r = (t * per).min(jobs)..((t + 1) * per).min(jobs);
                    s.spawn(move || work(r));
                }
                work(0..per.min(jobs));
            });
        }
        // SAFETY: every real token appears in exactly one window position (the index is a
        // bijection onto 0..l plus padding), and each job writes all `c` channels of each of
        // its tokens (every head's `hd`), so all `len` elements are written.
        unsafe { out.set_len(len) };
        out
    }

    /// [`Self::windows`] compiled with AVX2 + FMA, one query row at a time (the tests compare
    /// it with the tiled kernels).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `dst` as in `windows`.
    #[cfg(all(test, target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn windows_avx2(&self, jobs: Range<usize>, dst: &OutPtr) {
        self.windows::<true>(jobs, dst)
    }

    /// Fills `rows` with the qkv rows of window `w` of image `b` (`zeros` for a padding
    /// position); returns the window's token index and shift mask.
    pub(super) fn window_rows<'s>(
        &'s self,
        b: usize,
        w: usize,
        zeros: &'s [f32],
        rows: &mut Vec<&'s [f32]>,
    ) -> (&'s [u32], Option<&'s [f32]>) {
        let (l, c, n) = (self.tokens, self.dim, self.window_area);
        let idx = &self.index[w * n..(w + 1) * n];
        rows.clear();
        rows.extend(idx.iter().map(|&t| {
            let t = t as usize;
            if t < l {
                &self.qkv[(b * l + t) * 3 * c..(b * l + t + 1) * 3 * c]
            } else {
                zeros
            }
        }));
        (idx, self.mask.map(|m| &m[w * n * n..(w + 1) * n * n]))
    }

    /// Windows `jobs` (indices into `batch x nW`).
    #[inline(always)]
    pub(super) fn windows<const FMA: bool>(&self, jobs: Range<usize>, dst: &OutPtr) {
        let (l, c, n, heads) = (self.tokens, self.dim, self.window_area, self.heads);
        let hd = c / heads;
        let nw = self.index.len() / n;
        let mut kt = vec![0f32; hd * n];
        let mut v = vec![0f32; n * hd];
        let mut s = vec![0f32; n];
        let mut o = vec![0f32; hd];
        let mut qb = vec![0f32; hd];
        let zeros = vec![0f32; 3 * c];
        let mut rows: Vec<&[f32]> = Vec::with_capacity(n);
        for job in jobs {
            let (b, w) = (job / nw, job % nw);
            let (idx, mask) = self.window_rows(b, w, &zeros, &mut rows);
            for h in 0..heads {
                let (qh, kh, vh) = (h * hd, c + h * hd, 2 * c + h * hd);
                let (bq, bk, bv) = (
                    &self.qkv_bias[qh..qh + hd],
                    &self.qkv_bias[kh..kh + hd],
                    &self.qkv_bias[vh..vh + hd],
                );
                for (j, row) in rows.iter().enumerate() {
                    for (d, (&kv, &b)) in row[kh..kh + hd].iter().zip(bk).enumerate() {
                        kt[d * n + j] = kv + b;
                    }
                    let vr = &row[vh..vh + hd];
                    for ((dst, &x), &b) in v[j * hd..(j + 1) * hd].iter_mut().zip(vr).zip(bv) {
                        *dst = x + b;
                    }
                }
                let bias_h = &self.bias[h * n * n..(h + 1) * n * n];
                for (i, row) in rows.iter().enumerate() {
                    let t = idx[i] as usize;
                    if t >= l {
                        continue; // a padding token's output is cropped away
                    }
                    for ((dst, &x), &b) in qb.iter_mut().zip(&row[qh..qh + hd]).zip(bq) {
                        *dst = x + b;
                    }
                    s.copy_from_slice(&bias_h[i * n..(i + 1) * n]);
                    if let Some(m) = mask {
                        s.iter_mut()
                            .zip(&m[i * n..(i + 1) * n])
                            .for_each(|(a, b)| *a += b);
                    }
                    scores::<FMA>(&mut s, &qb, &kt, n);
                    let sum = softmax_numerators::<FMA>(&mut s);
                    weighted_sum::<FMA>(&mut o, &s, &v, hd);
                    let inv = 1.0 / sum;
                    // SAFETY: `t < l` is a real token; every real token appears in exactly one
                    // window position (the index is a bijection onto 0..l plus padding), so this
                    // row of `out` (`hd` elements inside its capacity) is written by this thread
                    // only, once per head, and the buffer outlives the scoped threads.
                    let row = unsafe { dst.0.add((b * l + t) * c + h * hd) };
                    for (j, &x) in o.iter().enumerate() {
                        // SAFETY: j < hd (as above); a plain write to possibly uninit memory.
                        unsafe { row.add(j).write(x * inv) };
                    }
                }
            }
        }
    }
}

/// `s[j] += sum_d q[d] kt[d][j]` (`kt` is `hd x n`), four `d` at a time so that each pass
/// over `s` does four multiply-adds per element.
#[inline(always)]
fn scores<const FMA: bool>(s: &mut [f32], q: &[f32], kt: &[f32], n: usize) {
    let mut qd = q.chunks_exact(4);
    let mut kd = kt.chunks_exact(4 * n);
    for (q4, k4) in (&mut qd).zip(&mut kd) {
        let (k0, rest) = k4.split_at(n);
        let (k1, rest) = rest.split_at(n);
        let (k2, k3) = rest.split_at(n);
        for ((((a, &x0), &x1), &x2), &x3) in s.iter_mut().zip(k0).zip(k1).zip(k2).zip(k3) {
            let t = madd::<FMA>(q4[0], x0, *a);
            let t = madd::<FMA>(q4[1], x1, t);
            let t = madd::<FMA>(q4[2], x2, t);
            *a = madd::<FMA>(q4[3], x3, t);
        }
    }
    for (&qv, k) in qd.remainder().iter().zip(kd.remainder().chunks_exact(n)) {
        s.iter_mut()
            .zip(k)
            .for_each(|(a, &x)| *a = madd::<FMA>(qv, x, *a));
    }
}

/// `s[j] = exp(s[j] - max s)` in place; returns their sum (lane-wise partial sums so that the
/// loops vectorise).
#[inline(always)]
fn softmax_numerators<const FMA: bool>(s: &mut [f32]) -> f32 {
    const L: usize = 8;
    let mut m = [f32::NEG_INFINITY; L];
    let mut ch = s.chunks_exact(L);
    for c in &mut ch {
        for (a, &x) in m.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut max = m
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    for &x in ch.remainder() {
        max = if x > max { x } else { max };
    }
    s.iter_mut().for_each(|x| *x = exp_approx::<FMA>(*x - max));
    let mut acc = [0f32; L];
    let mut ch = s.chunks_exact(L);
    for c in &mut ch {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + ch.remainder().iter().sum::<f32>()
}

/// `o[d] = sum_j p[j] v[j][d]` (`v` is `n x hd`), four `j` at a time.
#[inline(always)]
fn weighted_sum<const FMA: bool>(o: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    o.fill(0.0);
    let mut pj = p.chunks_exact(4);
    let mut vj = v.chunks_exact(4 * hd);
    for (p4, v4) in (&mut pj).zip(&mut vj) {
        let (v0, rest) = v4.split_at(hd);
        let (v1, rest) = rest.split_at(hd);
        let (v2, v3) = rest.split_at(hd);
        for ((((a, &x0), &x1), &x2), &x3) in o.iter_mut().zip(v0).zip(v1).zip(v2).zip(v3) {
            let t = madd::<FMA>(p4[0], x0, *a);
            let t = madd::<FMA>(p4[1], x1, t);
            let t = madd::<FMA>(p4[2], x2, t);
            *a = madd::<FMA>(p4[3], x3, t);
        }
    }
    for (&pv, vr) in pj.remainder().iter().zip(vj.remainder().chunks_exact(hd)) {
        o.iter_mut()
            .zip(vr)
            .for_each(|(a, &x)| *a = madd::<FMA>(pv, x, *a));
    }
}

/// The output buffer, shared by the scoped threads (disjoint rows).
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: the threads write disjoint rows (see `windows`), and the buffer outlives them.
unsafe impl Sync for OutPtr {}

/// Test inputs shared by the kernels' tests: two images of `h x w` tokens, hashed values.
#[cfg(test)]
pub(super) struct TestCase {
    geo: crate::swin::window::WindowGeometry,
    qkv: Vec<f32>,
    qkv_bias: Vec<f32>,
    bias: Vec<f32>,
    /// Images, tokens per image, channels, heads.
    pub(super) dims: (usize, usize, usize, usize),
}

#[cfg(test)]
impl TestCase {
    /// The case `(h, w, window, shift, c, heads)`.
    pub(super) fn new(
        (h, w, window, shift, c, heads): (usize, usize, usize, usize, usize, usize),
    ) -> Self {
        let dev = candle_core::Device::Cpu;
        let geo = crate::swin::window::WindowGeometry::new(
            h,
            w,
            window,
            shift,
            candle_core::DType::F32,
            &dev,
        )
        .expect("geometry");
        let (b, l, n) = (2, h * w, window * window);
        let hash = |i: usize, m: usize| ((i * 2_654_435_761) % m) as f32 / m as f32 - 0.5;
        Self {
            geo,
            qkv: (0..b * l * 3 * c).map(|i| 2.0 * hash(i, 997)).collect(),
            qkv_bias: (0..3 * c).map(|i| hash(i + 7, 101)).collect(),
            bias: (0..heads * n * n).map(|i| hash(i + 3, 89)).collect(),
            dims: (b, l, c, heads),
        }
    }

    /// The kernel's inputs.
    pub(super) fn attention(&self) -> WindowAttention<'_> {
        let (batch, tokens, dim, heads) = self.dims;
        WindowAttention {
            qkv: &self.qkv,
            qkv_bias: &self.qkv_bias,
            index: &self.geo.forward_host,
            bias: &self.bias,
            mask: self.geo.mask_host.as_deref(),
            batch,
            tokens,
            dim,
            heads,
            window_area: self.geo.window_area,
        }
    }

    /// Every window of every image as one job range.
    pub(super) fn jobs(&self) -> Range<usize> {
        0..self.dims.0 * self.geo.num_windows
    }

    /// The portable kernel's output.
    pub(super) fn portable(&self) -> Vec<f32> {
        let (b, l, c, _) = self.dims;
        let mut want = vec![f32::NAN; b * l * c];
        self.attention()
            .windows::<false>(self.jobs(), &OutPtr(want.as_mut_ptr()));
        want
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use crate::swin::window::WindowGeometry;

    /// Stage-1 attention of Swin-T at 512x512 (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn bench_window_attention() {
        let dev = candle_core::Device::Cpu;
        for (hw, c, heads, shift) in [(128, 96, 3, 3), (32, 384, 12, 0)] {
            let geo = WindowGeometry::new(hw, hw, 7, shift, candle_core::DType::F32, &dev).unwrap();
            let l = hw * hw;
            let n = 49;
            let qkv: Vec<f32> = (0..l * 3 * c)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let qkv_bias = vec![0.1f32; 3 * c];
            let bias: Vec<f32> = (0..heads * n * n).map(|i| (i % 13) as f32 * 0.01).collect();
            let k = WindowAttention {
                qkv: &qkv,
                qkv_bias: &qkv_bias,
                index: &geo.forward_host,
                bias: &bias,
                mask: geo.mask_host.as_deref(),
                batch: 1,
                tokens: l,
                dim: c,
                heads,
                window_area: n,
            };
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t0 = std::time::Instant::now();
                std::hint::black_box(k.run());
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let flops = 4.0 * (geo.num_windows * n * n * c) as f64;
            eprintln!(
                "{hw}x{hw} C={c}: {:.2} ms, {:.1} GFLOP/s",
                best * 1e3,
                flops / best / 1e9
            );
        }
    }
}
