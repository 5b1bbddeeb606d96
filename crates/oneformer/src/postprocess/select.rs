//! Index selection with PyTorch's CPU semantics: `torch.topk(x, k, sorted=False)` (whose order
//! the instance post-processing depends on) and `argmax` over the first axis.
//!
//! ATen's CPU `topk` (`TopKImpl.h`, torch 2.15) fills a queue of `(value as f64, index)` pairs and
//! runs libstdc++'s `std::partial_sort` when `k * 64 <= n`, else `std::nth_element` at `k - 1`
//! (no sort when `sorted=False`), with the comparator "NaN first, then greater value". The order
//! of the first `k` entries afterwards is a deterministic function of those algorithms, including
//! among equal values, so this module reimplements libstdc++'s `__introselect`,
//! `__heap_select`, `__sort_heap`, `__adjust_heap` and `__insertion_sort` step by step.
//!
//! # Shapes
//! [`topk_unsorted`]: `x` of length `n`, `k <= n` -> `k` indices into `x`.

type Elem = (f64, usize);

/// libstdc++'s comparator of ATen's topk with `largest=True`: NaN sorts first, then larger.
#[inline]
fn comp(a: &Elem, b: &Elem) -> bool {
    (a.0.is_nan() && !b.0.is_nan()) || a.0 > b.0
}

/// `std::__push_heap` on `a` (heap rooted at `top`).
fn push_heap(a: &mut [Elem], mut hole: usize, top: usize, value: Elem) {
    while hole > top {
        let parent = (hole - 1) / 2;
        if !comp(&a[parent], &value) {
            break;
        }
        a[hole] = a[parent];
        hole = parent;
    }
    a[hole] = value;
}

/// `std::__adjust_heap` on the heap `a[..len]`.
fn adjust_heap(a: &mut [Elem], mut hole: usize, len: usize, value: Elem) {
    let top = hole;
    let mut second = hole;
    while len >= 1 && second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if comp(&a[second], &a[second - 1]) {
            second -= 1;
        }
        a[hole] = a[second];
        hole = second;
    }
    if len & 1 == 0 && len >= 2 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        a[hole] = a[second - 1];
        hole = second - 1;
    }
    push_heap(a, hole, top, value);
}

/// `std::__make_heap` on `a`.
fn make_heap(a: &mut [Elem]) {
    let len = a.len();
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        let v = a[parent];
        adjust_heap(a, parent, len, v);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

/// `std::__pop_heap(first, first + len, result)`.
fn pop_heap(a: &mut [Elem], len: usize, result: usize) {
    let v = a[result];
    a[result] = a[0];
    adjust_heap(a, 0, len, v);
}

/// `std::__heap_select(first, first + middle, first + a.len())`.
fn heap_select(a: &mut [Elem], middle: usize) {
    make_heap(&mut a[..middle]);
    for i in middle..a.len() {
        if comp(&a[i], &a[0]) {
            pop_heap(a, middle, i);
        }
    }
}

/// `std::__sort_heap` on `a[..len]`.
fn sort_heap(a: &mut [Elem], mut len: usize) {
    while len > 1 {
        len -= 1;
        pop_heap(a, len, len);
    }
}

/// `std::__insertion_sort` (stable for equal elements).
fn insertion_sort(a: &mut [Elem]) {
    for i in 1..a.len() {
        let v = a[i];
        if comp(&v, &a[0]) {
            a.copy_within(0..i, 1);
            a[0] = v;
        } else {
            let mut last = i;
            while comp(&v, &a[last - 1]) {
                a[last] = a[last - 1];
                last -= 1;
            }
            a[last] = v;
        }
    }
}

/// `std::__move_median_to_first(result, a, b, c)`.
fn move_median_to_first(s: &mut [Elem], result: usize, a: usize, b: usize, c: usize) {
    let pick = if comp(&s[a], &s[b]) {
        if comp(&s[b], &s[c]) {
            b
        } else if comp(&s[a], &s[c]) {
            c
        } else {
            a
        }
    } else if comp(&s[a], &s[c]) {
        a
    } else if comp(&s[b], &s[c]) {
        c
    } else {
        b
    };
    s.swap(result, pick);
}

/// `std::__unguarded_partition(first, last, pivot)` with the pivot at index 0 of `s` and
/// `first = 1`, `last = s.len()`.
fn unguarded_partition(s: &mut [Elem]) -> usize {
    let (mut first, mut last) = (1, s.len());
    loop {
        while comp(&s[first], &s[0]) {
            first += 1;
        }
        last -= 1;
        while comp(&s[0], &s[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        s.swap(first, last);
        first += 1;
    }
}

/// `std::nth_element(a, a + nth, a + len)` (libstdc++'s introselect).
fn nth_element(a: &mut [Elem], nth: usize) {
    let n = a.len();
    if n == 0 || nth >= n {
        return;
    }
    let (mut first, mut last) = (0, n);
    let mut depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    while last - first > 3 {
        if depth == 0 {
            heap_select(&mut a[first..last], nth + 1 - first);
            a.swap(first, nth);
            return;
        }
        depth -= 1;
        let s = &mut a[first..last];
        let mid = s.len() / 2;
        let end = s.len() - 1;
        move_median_to_first(s, 0, 1, mid, end);
        let cut = first + unguarded_partition(s);
        if cut <= nth {
            first = cut;
        } else {
            last = cut;
        }
    }
    insertion_sort(&mut a[first..last]);
}

/// The indices `torch.topk(x, k, largest=True, sorted=False)` returns on CPU, in the same order
/// (`k` is clamped to `x.len()`).
///
/// ```
/// use segkit_oneformer::postprocess::topk_unsorted;
///
/// // k * 64 <= n: partial sort, so the result happens to come out sorted.
/// let x: Vec<f32> = (0..128).map(|i| ((i * 37) % 128) as f32).collect();
/// let top = topk_unsorted(&x, 2);
/// assert_eq!((x[top[0]], x[top[1]]), (127.0, 126.0));
/// ```
pub fn topk_unsorted(x: &[f32], k: usize) -> Vec<usize> {
    let n = x.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let mut q: Vec<Elem> = x.iter().enumerate().map(|(i, &v)| (v as f64, i)).collect();
    if k * 64 <= n {
        heap_select(&mut q, k);
        sort_heap(&mut q, k);
    } else {
        nth_element(&mut q, k - 1);
    }
    q.truncate(k);
    q.into_iter().map(|(_, i)| i).collect()
}

/// `torch.argmax(x, dim=0)` of `x` laid out as `n` rows of `len` values: per column, the first
/// index of the maximum, with NaN counting as the maximum (ATen's `greater_or_nan`).
pub(crate) fn argmax_rows(x: &[f32], n: usize, len: usize) -> Vec<u32> {
    let mut best: Vec<f32> = x[..len].to_vec();
    let mut idx = vec![0u32; len];
    for r in 1..n {
        let row = &x[r * len..(r + 1) * len];
        for ((b, i), &v) in best.iter_mut().zip(idx.iter_mut()).zip(row) {
            if v > *b || (v.is_nan() && !b.is_nan()) {
                *b = v;
                *i = r as u32;
            }
        }
    }
    idx
}
