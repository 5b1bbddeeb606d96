//! Exact linear sum assignment (Hungarian matching), equal to
//! `scipy.optimize.linear_sum_assignment`, tie-breaking included.
//!
//! Reference: scipy `scipy/optimize/rectangular_lsap/rectangular_lsap.cpp` (scipy >= 1.6), the
//! shortest augmenting path algorithm of Crouse ("On implementing 2D rectangular assignment
//! algorithms", IEEE TAES 52(4), 2016, pp. 1685-1686), a Jonker-Volgenant variant without
//! initialisation. The same steps in the same order give the same optimum among ties:
//! - a matrix with more rows than columns is transposed (and the result sorted by row);
//! - rows are added one by one; each search scans the unvisited columns in the order
//!   `nc - 1, .., 0` (swap-removing the picked one), keeps the first column of minimal reduced
//!   cost, preferring an unassigned column among equal minima;
//! - the duals are updated and the path augmented as in scipy.
//!
//! Costs are `f64`; NaN or `-inf` is an [`Error::InvalidCost`], `+inf` marks a forbidden pair
//! and an assignment that cannot avoid one is an [`Error::InfeasibleCost`] (scipy's two
//! `ValueError`s). An empty matrix (`0 x n` or `n x 0`) gives empty vectors.
//!
//! # Shapes
//! `cost`: row-major `rows x cols`; output: `min(rows, cols)` row indices (ascending) and their
//! column indices.
//!
//! # Example
//! ```
//! use segkit_losses::linear_sum_assignment;
//!
//! let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
//! let (rows, cols) = linear_sum_assignment(&cost, 3, 3, false)?;
//! assert_eq!(rows, [0, 1, 2]);
//! assert_eq!(cols, [1, 0, 2]);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use crate::util::shape_err;
use crate::{Error, Result};

/// Solves `min sum_i cost[i, col(i)]` (or `max` with `maximize`) over assignments of
/// `min(rows, cols)` rows to distinct columns; returns `(row_ind, col_ind)` exactly as scipy.
pub fn linear_sum_assignment(
    cost: &[f64],
    rows: usize,
    cols: usize,
    maximize: bool,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if cost.len() != rows * cols {
        return Err(shape_err("cost matrix", &[rows, cols], &[cost.len()]));
    }
    if rows == 0 || cols == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let transpose = cols < rows;
    let (nr, nc) = if transpose {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let mut c = vec![0f64; nr * nc];
    for i in 0..rows {
        for j in 0..cols {
            let v = cost[i * cols + j];
            let v = if maximize { -v } else { v };
            if v.is_nan() || v == f64::NEG_INFINITY {
                return Err(Error::InvalidCost {
                    row: i,
                    col: j,
                    value: cost[i * cols + j],
                });
            }
            if transpose {
                c[j * nc + i] = v;
            } else {
                c[i * nc + j] = v;
            }
        }
    }
    let col4row = solve(&c, nr, nc).ok_or(Error::InfeasibleCost { rows, cols })?;
    if transpose {
        // `col4row` maps each original column to its row; sort by row.
        let mut order: Vec<usize> = (0..nr).collect();
        order.sort_by_key(|&v| col4row[v]);
        let a = order.iter().map(|&v| col4row[v]).collect();
        Ok((a, order))
    } else {
        Ok(((0..nr).collect(), col4row))
    }
}

/// The shortest augmenting path solver for `nr <= nc`; `None` when infeasible.
fn solve(cost: &[f64], nr: usize, nc: usize) -> Option<Vec<usize>> {
    const NONE: usize = usize::MAX;
    let mut u = vec![0f64; nr];
    let mut v = vec![0f64; nc];
    let mut spc = vec![f64::INFINITY; nc];
    let mut path = vec![NONE; nc];
    let mut col4row = vec![NONE; nr];
    let mut row4col = vec![NONE; nc];
    let mut sr = vec![false; nr];
    let mut sc = vec![false; nc];
    let mut remaining = vec![0usize; nc];

    for cur_row in 0..nr {
        // Find the shortest augmenting path from `cur_row`.
        for (it, r) in remaining.iter_mut().enumerate() {
            *r = nc - it - 1;
        }
        let mut num_remaining = nc;
        sr.fill(false);
        sc.fill(false);
        spc.fill(f64::INFINITY);
        let mut min_val = 0f64;
        let mut i = cur_row;
        let sink = loop {
            let mut index = NONE;
            let mut lowest = f64::INFINITY;
            sr[i] = true;
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let r = min_val + cost[i * nc + j] - u[i] - v[j];
                if r < spc[j] {
                    path[j] = i;
                    spc[j] = r;
                }
                if spc[j] < lowest || (spc[j] == lowest && row4col[j] == NONE) {
                    lowest = spc[j];
                    index = it;
                }
            }
            min_val = lowest;
            if min_val == f64::INFINITY || index == NONE {
                return None;
            }
            let j = remaining[index];
            sc[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };

        // Update the dual variables.
        u[cur_row] += min_val;
        for ii in 0..nr {
            if sr[ii] && ii != cur_row {
                u[ii] += min_val - spc[col4row[ii]];
            }
        }
        for jj in 0..nc {
            if sc[jj] {
                v[jj] -= min_val - spc[jj];
            }
        }

        // Augment the previous solution.
        let mut j = sink;
        loop {
            let ii = path[j];
            row4col[j] = ii;
            std::mem::swap(&mut col4row[ii], &mut j);
            if ii == cur_row {
                break;
            }
        }
    }
    Some(col4row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(cost: &[f64], cols: usize, r: &[usize], c: &[usize]) -> f64 {
        r.iter().zip(c).map(|(&i, &j)| cost[i * cols + j]).sum()
    }

    #[test]
    fn constant_matrix_gives_identity() -> Result<()> {
        let (r, c) = linear_sum_assignment(&[1.0; 9], 3, 3, false)?;
        assert_eq!((r, c), (vec![0, 1, 2], vec![0, 1, 2]));
        Ok(())
    }

    #[test]
    fn rectangular_and_empty() -> Result<()> {
        let cost = [3.0, 1.0, 2.0, 0.5, 7.0, 1.0];
        let (r, c) = linear_sum_assignment(&cost, 2, 3, false)?;
        assert_eq!(total(&cost, 3, &r, &c), 1.5);
        // Three optima of cost 3; scipy returns rows [0, 1] -> columns [1, 0].
        let (r, c) = linear_sum_assignment(&cost, 3, 2, false)?;
        assert_eq!((r, c), (vec![0, 1], vec![1, 0]));
        assert_eq!(linear_sum_assignment(&[], 0, 4, false)?, (vec![], vec![]));
        assert_eq!(linear_sum_assignment(&[], 4, 0, false)?, (vec![], vec![]));
        Ok(())
    }

    #[test]
    fn invalid_and_infeasible() {
        let e = linear_sum_assignment(&[1.0, f64::NAN, 0.0, 1.0], 2, 2, false).unwrap_err();
        assert!(matches!(e, Error::InvalidCost { row: 0, col: 1, .. }));
        let e = linear_sum_assignment(&[f64::NEG_INFINITY, 0.0], 1, 2, false).unwrap_err();
        assert!(matches!(e, Error::InvalidCost { .. }));
        let inf = f64::INFINITY;
        let e = linear_sum_assignment(&[inf, 1.0, inf, 2.0], 2, 2, false).unwrap_err();
        assert!(matches!(e, Error::InfeasibleCost { .. }));
        let (r, c) = linear_sum_assignment(&[inf, 1.0, 2.0, inf], 2, 2, false).unwrap();
        assert_eq!((r, c), (vec![0, 1], vec![1, 0]));
        assert!(linear_sum_assignment(&[1.0; 5], 2, 3, false).is_err());
    }
}

#[cfg(test)]
mod brute_force {
    use super::*;

    fn perms(n: usize, k: usize) -> Vec<Vec<usize>> {
        // All injective maps 0..k -> 0..n.
        let mut out = vec![vec![]];
        for _ in 0..k {
            let mut next = vec![];
            for p in &out {
                for j in 0..n {
                    if !p.contains(&j) {
                        let mut q = p.clone();
                        q.push(j);
                        next.push(q);
                    }
                }
            }
            out = next;
        }
        out
    }

    #[test]
    fn optimal_on_small_random_matrices() {
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 1000) as f64 / 100.0
        };
        for r in 1..=5 {
            for c in 1..=5 {
                let cost: Vec<f64> = (0..r * c).map(|_| next()).collect();
                let (a, b) = linear_sum_assignment(&cost, r, c, false).unwrap();
                let got: f64 = a.iter().zip(&b).map(|(&i, &j)| cost[i * c + j]).sum();
                let best = if r <= c {
                    perms(c, r)
                        .iter()
                        .map(|p| {
                            p.iter()
                                .enumerate()
                                .map(|(i, &j)| cost[i * c + j])
                                .sum::<f64>()
                        })
                        .fold(f64::INFINITY, f64::min)
                } else {
                    perms(r, c)
                        .iter()
                        .map(|p| {
                            p.iter()
                                .enumerate()
                                .map(|(j, &i)| cost[i * c + j])
                                .sum::<f64>()
                        })
                        .fold(f64::INFINITY, f64::min)
                };
                assert!((got - best).abs() < 1e-9, "{r}x{c}: {got} vs {best}");
                let (_, bm) = linear_sum_assignment(&cost, r, c, true).unwrap();
                assert_eq!(bm.len(), r.min(c));
            }
        }
    }
}
