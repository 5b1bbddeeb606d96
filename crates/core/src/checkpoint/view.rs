//! Copying a tensor view out of its storage's bytes, with every size checked before anything
//! is allocated, and the byte budget that bounds what a checkpoint may make the reader allocate.

use candle_core::{Device, Tensor};

use super::torch::TensorRef;

type R<T> = std::result::Result<T, String>;

/// Bytes a reader may allocate beyond twice the file's size (small files, compressed entries).
pub(super) const BUDGET_SLACK: u64 = 32 << 20;

/// A bound on the bytes one checkpoint may make the reader allocate for one purpose
/// (decompressed storages, or copied tensors): twice the file's size plus
/// [`BUDGET_SLACK`]. A real checkpoint needs at most its file's size for each: its storages
/// are in the file and its tensors are views of them. What exceeds it (a decompression bomb,
/// a stride-0 view declaring a huge size, thousands of overlapping views of one storage) is
/// refused before the allocation.
#[derive(Debug)]
pub(super) struct Budget {
    limit: u64,
    used: u64,
    what: &'static str,
}

impl Budget {
    pub fn for_file(file_len: u64, what: &'static str) -> Self {
        Self {
            limit: file_len.saturating_mul(2).saturating_add(BUDGET_SLACK),
            used: 0,
            what,
        }
    }

    /// Takes `bytes` from the budget, or says why not.
    pub fn charge(&mut self, bytes: u64) -> R<()> {
        match self.used.checked_add(bytes) {
            Some(u) if u <= self.limit => {
                self.used = u;
                Ok(())
            }
            _ => Err(format!(
                "{} would need {bytes} bytes more than the {} already used, beyond this \
                 checkpoint's bound of {} bytes (twice the file's size + {} MiB); a real \
                 checkpoint needs at most its file's size",
                self.what,
                self.used,
                self.limit,
                BUDGET_SLACK >> 20
            )),
        }
    }
}

/// Elements of a shape, or `None` if the count (zero dimensions counted as one, so that no
/// stride of the shape overflows either) does not fit in a usize.
fn checked_numel(size: &[usize]) -> Option<usize> {
    size.iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s.max(1)))?;
    Some(size.iter().product())
}

/// Copies the elements of `r` out of its root storage's `bytes` (already checked to hold
/// `r.storage_numel` elements) into a contiguous candle tensor, charging its size to `budget`
/// first.
pub(super) fn materialize(bytes: &[u8], r: &TensorRef, budget: &mut Budget) -> R<Tensor> {
    let es = r.dtype.size_in_bytes();
    let numel = checked_numel(&r.size)
        .ok_or_else(|| format!("its size {:?} overflows the element count", r.size))?;
    let nbytes = numel
        .checked_mul(es)
        .ok_or_else(|| format!("its size {:?} overflows the byte count", r.size))?;
    if numel == 0 {
        return Tensor::zeros(r.size.as_slice(), r.dtype, &Device::Cpu).map_err(|e| e.to_string());
    }
    // First and last elements read: offset and offset + sum((size - 1) * stride), which must
    // lie inside the storage (or the storage view the tensor was saved from).
    let last = r
        .size
        .iter()
        .zip(&r.stride)
        .try_fold(r.offset, |a, (&s, &st)| {
            (s - 1).checked_mul(st).and_then(|x| x.checked_add(a))
        })
        .ok_or("its strides overflow")?;
    if r.offset < r.lo || last >= r.hi || r.hi > r.storage_numel {
        return Err(format!(
            "view (size {:?}, stride {:?}) reads elements {}..={last}, outside its storage's \
             elements {}..{}",
            r.size, r.stride, r.offset, r.lo, r.hi
        ));
    }
    budget.charge(nbytes as u64).map_err(|e| {
        format!(
            "view of {numel} elements (size {:?}, stride {:?}): {e}",
            r.size, r.stride
        )
    })?;
    let oob = || "view outside its storage".to_string();
    let t = if is_c_contiguous(&r.size, &r.stride) {
        let data = bytes
            .get(r.offset * es..(r.offset + numel) * es)
            .ok_or_else(oob)?;
        Tensor::from_raw_buffer(data, r.dtype, &r.size, &Device::Cpu)
    } else {
        let data = gather(bytes, es, r, numel).ok_or_else(oob)?;
        Tensor::from_raw_buffer(&data, r.dtype, &r.size, &Device::Cpu)
    };
    t.map_err(|e| e.to_string())
}

fn is_c_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(s);
    }
    true
}

/// Strided copy of `numel > 0` elements, row-major; innermost runs with stride 1 are copied
/// as one slice. `None` if an index falls outside `bytes` (bounds are checked before).
fn gather(bytes: &[u8], es: usize, r: &TensorRef, numel: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(numel * es);
    let rank = r.size.len();
    if rank == 0 {
        out.extend_from_slice(bytes.get(r.offset * es..(r.offset + 1) * es)?);
        return Some(out);
    }
    let (inner, inner_stride) = (r.size[rank - 1], r.stride[rank - 1]);
    let mut idx = vec![0usize; rank - 1];
    for _ in 0..numel / inner {
        let base = r.offset
            + idx
                .iter()
                .zip(&r.stride)
                .map(|(&i, &st)| i * st)
                .sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(bytes.get(base * es..(base + inner) * es)?);
        } else {
            for j in 0..inner {
                let p = (base + j * inner_stride) * es;
                out.extend_from_slice(bytes.get(p..p + es)?);
            }
        }
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < r.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}

/// Reverses the bytes of each `es`-byte element in place (big-endian data to little-endian).
pub(super) fn swap_bytes(bytes: &mut [u8], es: usize) {
    if es > 1 {
        for e in bytes.chunks_exact_mut(es) {
            e.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;

    fn view(size: &[usize], stride: &[usize], offset: usize, numel: usize) -> TensorRef {
        TensorRef {
            storage: "0".into(),
            dtype: DType::F32,
            storage_numel: numel,
            lo: 0,
            hi: numel,
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn hostile_views_fail_before_allocating() {
        let bytes = vec![0u8; 16];
        let mut b = Budget::for_file(16, "tensors");
        for (r, says) in [
            // stride 0, 10^12 elements: within the storage, but beyond the budget.
            (view(&[1 << 40], &[0], 0, 4), "bound"),
            // numel * 4 wraps to 0 in 64 bits.
            (view(&[1 << 62], &[0], 0, 4), "overflows the byte count"),
            (
                view(&[usize::MAX, 2], &[0, 0], 0, 4),
                "overflows the element count",
            ),
            // A zero dimension next to dimensions whose strides would overflow.
            (
                view(&[0, usize::MAX, 3], &[1, 1, 1], 0, 4),
                "overflows the element count",
            ),
            (view(&[4], &[usize::MAX / 2], 0, 4), "strides overflow"),
            (view(&[5], &[1], 0, 4), "outside"),
            (view(&[2], &[1], 3, 4), "outside"),
        ] {
            let e = materialize(&bytes, &r, &mut b).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        // A small expanded view is fine.
        let t = materialize(&bytes, &view(&[3, 4], &[0, 1], 0, 4), &mut b).unwrap();
        assert_eq!(t.dims(), [3, 4]);
    }

    #[test]
    fn budget_is_cumulative() {
        let mut b = Budget::for_file(0, "x");
        b.charge(BUDGET_SLACK - 1).unwrap();
        b.charge(1).unwrap();
        assert!(b.charge(1).is_err());
    }
}
