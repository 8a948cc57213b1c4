//! Several belts drawn in stated proportions (curriculum stages, data sources). Each batch comes
//! whole from one belt; which one is a pure function of (seed, draw number), so the state is the
//! draw count plus each belt's own state. Belts are shared (`Arc<Mutex<_>>`) with their owners,
//! who may keep reading them.

use super::belt::{Belt, BeltState};
use super::stream::Batch;
use crate::error::{Error, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex, MutexGuard};

pub type SharedBelt = Arc<Mutex<Belt>>;

/// Locks a shared belt; a lock poisoned by a panic becomes an error, never a second panic.
pub fn lock(b: &SharedBelt) -> Result<MutexGuard<'_, Belt>> {
    b.lock().map_err(|_| Error::value("Mixture", "a belt was left inconsistent by an earlier panic"))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixtureState {
    pub seed: u64,
    pub draws: u64,
    pub belts: Vec<BeltState>,
}

pub struct Mixture {
    belts: Vec<SharedBelt>,
    /// Cumulative normalised weights; the last is +inf so rounding never leaves a gap.
    cum: Vec<f64>,
    seed: u64,
    draws: u64,
}

impl Mixture {
    /// Belts must share seq_len, batch_size and doc_mask (a batch is a batch whichever belt
    /// made it); weights must be positive and finite.
    pub fn new(parts: Vec<(SharedBelt, f64)>, seed: u64) -> Result<Mixture> {
        if parts.is_empty() {
            return Err(Error::value("Mixture", "no belts given"));
        }
        if let Some((i, (_, w))) = parts.iter().enumerate().find(|(_, (_, w))| !(w.is_finite() && *w > 0.0)) {
            return Err(Error::value("Mixture", format!("weight {w} of belt {i} is not a positive finite number")));
        }
        let shape = |b: &Belt| (b.config().seq_len, b.config().batch_size, b.config().doc_mask);
        let first = shape(&*lock(&parts[0].0)?);
        for (i, (b, _)) in parts.iter().enumerate().skip(1) {
            let s = shape(&*lock(b)?);
            if s != first {
                return Err(Error::shape(
                    "Mixture",
                    format!("belt {i} has (seq_len, batch_size, doc_mask) = {s:?}, belt 0 has {first:?}"),
                ));
            }
        }
        let total: f64 = parts.iter().map(|(_, w)| w).sum();
        let mut acc = 0.0;
        let mut cum: Vec<f64> = parts
            .iter()
            .map(|(_, w)| {
                acc += w / total;
                acc
            })
            .collect();
        *cum.last_mut().expect("non-empty") = f64::INFINITY;
        Ok(Mixture { belts: parts.into_iter().map(|(b, _)| b).collect(), cum, seed, draws: 0 })
    }

    /// The belt of draw number `draw`: u ~ U[0,1) from ChaCha8 keyed by `seed` at word 2·draw.
    pub fn pick(&self, draw: u64) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_word_pos(draw as u128 * 2);
        let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        self.cum.iter().position(|&c| u < c).expect("the last bound is infinite")
    }

    /// The next batch and the index of the belt it came from.
    pub fn next_batch(&mut self) -> Result<(usize, Batch)> {
        let i = self.pick(self.draws);
        let batch = lock(&self.belts[i])?.next_batch()?;
        self.draws += 1;
        Ok((i, batch))
    }

    pub fn state(&self) -> Result<MixtureState> {
        let belts = self.belts.iter().map(|b| Ok(lock(b)?.state())).collect::<Result<_>>()?;
        Ok(MixtureState { seed: self.seed, draws: self.draws, belts })
    }

    pub fn load_state(&mut self, st: &MixtureState) -> Result<()> {
        if st.belts.len() != self.belts.len() {
            return Err(Error::value(
                "Mixture.load_state",
                format!("the state holds {} belts, this mixture has {}", st.belts.len(), self.belts.len()),
            ));
        }
        for (b, s) in self.belts.iter().zip(&st.belts) {
            lock(b)?.load_state(s)?;
        }
        (self.seed, self.draws) = (st.seed, st.draws);
        Ok(())
    }
}
