//! Top-k selection by score: per FPN level before NMS (`RPN_PRE_NMS_TOP_N`), and across levels
//! after it (Detectron's `collect`: `argsort(-scores)[:post_nms_topN]` over the concatenation).

/// Indices of the `k` highest `scores` by decreasing score (ties: lower index first; numpy's
/// `argpartition` / `argsort` leave tie order unspecified, so only the set is comparable when
/// scores tie at the cut). `k >= scores.len()` sorts all. NaN ranks above every number.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let cmp = |i: &usize, j: &usize| scores[*j].total_cmp(&scores[*i]).then(i.cmp(j));
    if k < idx.len() {
        if k == 0 {
            return Vec::new();
        }
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Top `k` over several score lists taken as one concatenation (Detectron's `collect` of the
/// per-level proposals): returns `(list, index in list)` pairs by decreasing score.
pub fn top_k_across(lists: &[&[f32]], k: usize) -> Vec<(usize, usize)> {
    let mut owner = Vec::new();
    let mut all = Vec::new();
    for (l, s) in lists.iter().enumerate() {
        all.extend_from_slice(s);
        owner.extend((0..s.len()).map(|i| (l, i)));
    }
    top_k(&all, k).into_iter().map(|i| owner[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_and_cuts() {
        let s = [0.1, 0.9, 0.5, 0.9, 0.3];
        assert_eq!(top_k(&s, 3), [1, 3, 2]);
        assert_eq!(top_k(&s, 9), [1, 3, 2, 4, 0]);
        assert!(top_k(&s, 0).is_empty());
        assert_eq!(top_k_across(&[&s[..2], &s[2..]], 2), [(0, 1), (1, 1)]);
    }
}
