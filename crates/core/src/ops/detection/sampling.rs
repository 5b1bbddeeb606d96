//! The random draws of training-time sampling (RPN anchors, RoIs), behind a trait so that a
//! run can replay a reference's draws exactly.
//!
//! Detectron draws with numpy: `npr.choice(inds, size, replace=False)` (distinct picks, in the
//! drawn order) and `npr.randint(len(inds), size=n)` (picks with replacement). An
//! [`IndexSampler`] answers both as positions into the candidate list; [`SeededSampler`] is a
//! deterministic generator (a training run is reproducible from its seed),
//! [`ReplaySampler`] hands out recorded draws (e.g. numpy's, saved by a parity generator) and
//! errors as soon as a request differs from the recording.
//!
//! ```
//! use segkit_core::ops::detection::{IndexSampler, SeededSampler};
//! let mut s = SeededSampler::new(7);
//! let p = s.choose(10, 4).unwrap();
//! assert_eq!(p.len(), 4);
//! assert!(p.iter().all(|&i| i < 10));
//! ```

use std::collections::VecDeque;

use crate::{Error, Result};

/// A source of random positions (see the module docs).
pub trait IndexSampler {
    /// `k` distinct positions in `0..n`, in drawn order (`npr.choice(n, k, replace=False)`).
    /// Called with `k <= n`.
    fn choose(&mut self, n: usize, k: usize) -> Result<Vec<usize>>;
    /// `k` positions in `0..n` drawn with replacement (`npr.randint(n, size=k)`). Called with
    /// `n > 0`.
    fn choose_with_replacement(&mut self, n: usize, k: usize) -> Result<Vec<usize>>;
}

impl<T: IndexSampler + ?Sized> IndexSampler for &mut T {
    fn choose(&mut self, n: usize, k: usize) -> Result<Vec<usize>> {
        (**self).choose(n, k)
    }
    fn choose_with_replacement(&mut self, n: usize, k: usize) -> Result<Vec<usize>> {
        (**self).choose_with_replacement(n, k)
    }
}

/// A deterministic [`IndexSampler`] on one SplitMix64 stream ([`crate::random::splitmix64`]):
/// an integer in `0..n` is `(z * n) >> 64` of the next 64-bit output `z`; `choose` is a
/// partial Fisher-Yates shuffle of `0..n`.
#[derive(Debug, Clone)]
pub struct SeededSampler {
    state: u64,
}

impl SeededSampler {
    /// A sampler whose stream starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The stream state (a sampler made with `SeededSampler::new(state)` continues exactly
    /// here).
    pub fn state(&self) -> u64 {
        self.state
    }

    fn below(&mut self, n: usize) -> usize {
        let z = crate::random::splitmix64(&mut self.state);
        ((u128::from(z) * n as u128) >> 64) as usize
    }
}

fn check_request(n: usize, k: usize, replace: bool) -> Result<()> {
    if !replace && k > n {
        return Err(Error::InvalidArgument(format!(
            "sampler: cannot choose {k} distinct positions out of {n}"
        )));
    }
    if replace && n == 0 && k > 0 {
        return Err(Error::InvalidArgument(format!(
            "sampler: cannot draw {k} positions out of an empty set"
        )));
    }
    Ok(())
}

impl IndexSampler for SeededSampler {
    fn choose(&mut self, n: usize, k: usize) -> Result<Vec<usize>> {
        check_request(n, k, false)?;
        let mut pool: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below(n - i);
            pool.swap(i, j);
        }
        pool.truncate(k);
        Ok(pool)
    }

    fn choose_with_replacement(&mut self, n: usize, k: usize) -> Result<Vec<usize>> {
        check_request(n, k, true)?;
        Ok((0..k).map(|_| self.below(n)).collect())
    }
}

/// One recorded draw: the candidate count `n`, whether it was drawn with replacement, and the
/// positions drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedDraw {
    /// Number of candidates the draw picked from.
    pub n: usize,
    /// `true` for `randint` (with replacement), `false` for `choice(replace=False)`.
    pub with_replacement: bool,
    /// The positions drawn, in order.
    pub positions: Vec<usize>,
}

/// An [`IndexSampler`] replaying [`RecordedDraw`]s in order. A request whose kind, `n` or `k`
/// differs from the next recording, or that finds none left, is an error naming both.
#[derive(Debug, Clone, Default)]
pub struct ReplaySampler {
    queue: VecDeque<RecordedDraw>,
}

impl ReplaySampler {
    /// A sampler replaying `draws` in order.
    pub fn new(draws: Vec<RecordedDraw>) -> Self {
        Self {
            queue: draws.into(),
        }
    }

    /// Draws not yet handed out.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }

    fn next(&mut self, n: usize, k: usize, with_replacement: bool) -> Result<Vec<usize>> {
        check_request(n, k, with_replacement)?;
        let d = self.queue.pop_front().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "replay sampler: no recorded draw left for a request of {k} out of {n}"
            ))
        })?;
        if d.n != n || d.with_replacement != with_replacement || d.positions.len() != k {
            return Err(Error::InvalidArgument(format!(
                "replay sampler: requested {k} out of {n} (with replacement: {with_replacement}), \
                 the recording has {} out of {} (with replacement: {})",
                d.positions.len(),
                d.n,
                d.with_replacement
            )));
        }
        let mut seen = vec![false; n];
        for &p in &d.positions {
            if p >= n || (!with_replacement && std::mem::replace(&mut seen[p], true)) {
                return Err(Error::InvalidArgument(format!(
                    "replay sampler: recorded position {p} is out of 0..{n} or repeated"
                )));
            }
        }
        Ok(d.positions)
    }
}

impl IndexSampler for ReplaySampler {
    fn choose(&mut self, n: usize, k: usize) -> Result<Vec<usize>> {
        self.next(n, k, false)
    }

    fn choose_with_replacement(&mut self, n: usize, k: usize) -> Result<Vec<usize>> {
        self.next(n, k, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_draws_are_distinct_and_reproducible() {
        let mut a = SeededSampler::new(3);
        let p = a.choose(50, 50).unwrap();
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        let q = a.choose_with_replacement(5, 100).unwrap();
        assert!(q.iter().all(|&i| i < 5));
        let mut b = SeededSampler::new(3);
        assert_eq!(b.choose(50, 50).unwrap(), p);
        assert!(a.choose(2, 3).is_err());
        assert!(a.choose_with_replacement(0, 1).is_err());
        assert!(a.choose_with_replacement(0, 0).unwrap().is_empty());
    }

    #[test]
    fn replay_checks_each_request() {
        let rec = |n, r, p: &[usize]| RecordedDraw {
            n,
            with_replacement: r,
            positions: p.to_vec(),
        };
        let mut s = ReplaySampler::new(vec![rec(4, false, &[2, 0]), rec(3, true, &[1, 1])]);
        assert_eq!(s.choose(4, 2).unwrap(), [2, 0]);
        assert!(s.choose(3, 2).is_err(), "kind differs");
        let mut s = ReplaySampler::new(vec![rec(3, true, &[1, 1]), rec(3, false, &[1, 1])]);
        assert_eq!(s.choose_with_replacement(3, 2).unwrap(), [1, 1]);
        assert!(
            s.choose(3, 2).is_err(),
            "repeated position without replacement"
        );
        assert!(s.choose(3, 1).is_err(), "nothing left");
    }
}
