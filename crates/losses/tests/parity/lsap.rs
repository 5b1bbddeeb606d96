//! `linear_sum_assignment` against scipy on `lsap.safetensors`: random real matrices, integer
//! matrices with many ties, constant, 1xN / Nx1, empty, +inf (feasible and infeasible),
//! NaN / -inf, maximisation.

use segkit_losses::{linear_sum_assignment, Error};

use crate::common::*;

#[test]
fn lsap_equals_scipy() {
    let f = load("lsap.safetensors");
    let cost = get(&f, "cost").to_vec1::<f64>().unwrap();
    let shape = get(&f, "shape").to_vec2::<i64>().unwrap();
    let status = ints(&f, "status");
    let ind = ints(&f, "indices");
    let (mut co, mut io) = (0usize, 0usize);
    let mut checked = 0;
    for (case, (s, &st)) in shape.iter().zip(&status).enumerate() {
        let (r, c, maximize) = (s[0] as usize, s[1] as usize, s[2] != 0);
        let m = &cost[co..co + r * c];
        co += r * c;
        let got = linear_sum_assignment(m, r, c, maximize);
        match st {
            0 => {
                let k = r.min(c);
                let want = &ind[io..io + 2 * k];
                io += 2 * k;
                let (a, b) = got.unwrap_or_else(|e| panic!("case {case} ({r}x{c}): {e}"));
                let flat: Vec<i64> = a
                    .iter()
                    .zip(&b)
                    .flat_map(|(&i, &j)| [i as i64, j as i64])
                    .collect();
                assert_eq!(flat, want, "case {case} ({r}x{c}, maximize {maximize})");
            }
            1 => assert!(
                matches!(got, Err(Error::InvalidCost { .. })),
                "case {case}: {got:?}"
            ),
            _ => assert!(
                matches!(got, Err(Error::InfeasibleCost { .. })),
                "case {case}: {got:?}"
            ),
        }
        checked += 1;
    }
    assert_eq!(co, cost.len());
    assert_eq!(io, ind.len());
    println!("lsap: {checked} matrices equal to scipy");
}
