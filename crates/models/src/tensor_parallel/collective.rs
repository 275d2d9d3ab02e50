//! Collectives between the ranks of a tensor-parallel group: the [`Collective`] trait the
//! sharded forward calls, and [`ThreadGroup`], its in-process implementation (one OS thread per
//! rank, CPU tensors) used on the CPU and in tests. NCCL is meant to implement the same trait.
//!
//! Owns: rendezvous of the ranks, the reduction (sum in rank order) and the gather, order
//! checking, bounded waits. Does not own: which tensors are reduced where (`sharded`), threads
//! (the caller runs one per rank).
//!
//! Invariants:
//! - Every call carries a [`CollectiveTag`] naming its call site; each rank's handle numbers its
//!   calls. Round `n` completes only when every rank's `n`-th call has the same tag, operation,
//!   shape and dtype; otherwise every rank gets an error naming both calls, and the group is
//!   poisoned (all later calls fail at once). A rank that never arrives makes the others fail
//!   after the group's timeout: no wait is unbounded.
//! - All ranks receive the same result tensor (computed once, by the last rank to arrive), so
//!   replicated activations stay bit-identical across ranks.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use crate::{ModelError, Result};

/// Where in the forward pass a collective is issued. Ranks run the same code, so their `n`-th
/// calls carry the same tag; a difference means the ranks diverged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectiveTag {
    /// Sum of the row-parallel attention output projection's partial products.
    AttentionOutput { layer_idx: usize },
    /// Sum of the row-parallel MLP down projection's partial products.
    MlpOutput { layer_idx: usize },
    /// Concatenation of the vocabulary-sharded logits.
    Logits,
}

/// The operation of one collective call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectiveOp {
    AllReduceSum,
    /// Concatenate every rank's tensor along `dim`, in rank order.
    AllGather {
        dim: usize,
    },
}

/// Communication among the `world_size` ranks of one tensor-parallel group, seen from one rank.
/// Every rank must issue the same calls in the same order (same tags).
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Elementwise sum of every rank's `x` (same shape and dtype on every rank).
    fn all_reduce_sum(&self, x: &Tensor, tag: CollectiveTag) -> Result<Tensor>;
    /// Every rank's `x` concatenated along `dim` in rank order (other dims equal).
    fn all_gather(&self, x: &Tensor, dim: usize, tag: CollectiveTag) -> Result<Tensor>;
    /// Marks the group failed (this rank cannot continue), so the others stop waiting for it.
    fn abort(&self, reason: &str);
}

/// What one rank brought to a round.
struct Contribution {
    tag: CollectiveTag,
    op: CollectiveOp,
    dims: Vec<usize>,
    dtype: DType,
    tensor: Tensor,
}

impl Contribution {
    fn describe(&self) -> String {
        format!("{:?} {:?} of shape {:?} {:?}", self.op, self.tag, self.dims, self.dtype)
    }
}

/// The rendezvous state of the group: one round at a time.
struct RoundState {
    /// Sequence number of the round being collected.
    round: u64,
    contributions: Vec<Option<Contribution>>,
    /// Set when every rank has contributed; taken by each rank once.
    outcome: Option<std::result::Result<Tensor, String>>,
    num_taken: usize,
    /// Once set, every call fails with this reason.
    poisoned: Option<String>,
}

struct Shared {
    world_size: usize,
    timeout: Duration,
    state: Mutex<RoundState>,
    changed: Condvar,
}

/// An in-process group: `world_size` handles, one per rank, to be moved to the ranks' threads.
pub struct ThreadGroup;

impl ThreadGroup {
    /// Handles for ranks `0..world_size`; every wait on a missing rank fails after `timeout`.
    pub fn connect(world_size: usize, timeout: Duration) -> Result<Vec<ThreadCollective>> {
        if world_size == 0 {
            return Err(ModelError::TensorParallel("a tensor-parallel group needs at least one rank".into()));
        }
        let shared = Arc::new(Shared {
            world_size,
            timeout,
            state: Mutex::new(RoundState {
                round: 0,
                contributions: (0..world_size).map(|_| None).collect(),
                outcome: None,
                num_taken: 0,
                poisoned: None,
            }),
            changed: Condvar::new(),
        });
        Ok((0..world_size).map(|rank| ThreadCollective { shared: shared.clone(), rank, next_round: Mutex::new(0) }).collect())
    }
}

/// One rank's handle of a [`ThreadGroup`].
pub struct ThreadCollective {
    shared: Arc<Shared>,
    rank: usize,
    /// Sequence number of this rank's next call.
    next_round: Mutex<u64>,
}

fn collective_error(message: String) -> ModelError {
    ModelError::Collective(message)
}

impl ThreadCollective {
    fn lock(&self) -> Result<MutexGuard<'_, RoundState>> {
        self.shared.state.lock().map_err(|_| collective_error("a rank panicked inside a collective".into()))
    }

    /// Waits on the condition variable until `deadline`; an error once it has passed.
    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, RoundState>,
        deadline: Instant,
        waiting_for: impl FnOnce(&RoundState) -> String,
    ) -> Result<MutexGuard<'a, RoundState>> {
        let now = Instant::now();
        if now >= deadline {
            let mut guard = guard;
            let reason = format!("rank {} timed out after {:?} waiting for {}", self.rank, self.shared.timeout, waiting_for(&guard));
            guard.poisoned.get_or_insert_with(|| reason.clone());
            self.shared.changed.notify_all();
            return Err(collective_error(reason));
        }
        let (guard, _) = self
            .shared
            .changed
            .wait_timeout(guard, deadline - now)
            .map_err(|_| collective_error("a rank panicked inside a collective".into()))?;
        Ok(guard)
    }

    /// One round: contribute `x`, wait for every rank, return the shared result.
    fn exchange(&self, x: &Tensor, op: CollectiveOp, tag: CollectiveTag) -> Result<Tensor> {
        let mut next_round = self.next_round.lock().map_err(|_| collective_error("poisoned round counter".into()))?;
        let my_round = *next_round;
        *next_round += 1;
        let device = x.device().clone();
        let contribution =
            Contribution { tag, op, dims: x.dims().to_vec(), dtype: x.dtype(), tensor: x.to_device(&candle_core::Device::Cpu)? };
        let deadline = Instant::now() + self.shared.timeout;
        let mut state = self.lock()?;
        // The previous round may still be handing out its result.
        while state.round != my_round && state.poisoned.is_none() {
            state = self.wait(state, deadline, |s| format!("round {} to finish before its call {my_round} ({tag:?})", s.round))?;
        }
        if let Some(reason) = &state.poisoned {
            return Err(collective_error(format!("rank {}: group failed earlier: {reason}", self.rank)));
        }
        state.contributions[self.rank] = Some(contribution);
        if state.contributions.iter().all(Option::is_some) {
            state.outcome = Some(self.combine(&state.contributions, my_round));
            self.shared.changed.notify_all();
        }
        loop {
            if state.outcome.is_some() {
                break;
            }
            if let Some(reason) = &state.poisoned {
                return Err(collective_error(format!("rank {}: group failed: {reason}", self.rank)));
            }
            state = self.wait(state, deadline, |s| {
                let missing: Vec<usize> = (0..s.contributions.len()).filter(|&r| s.contributions[r].is_none()).collect();
                format!("ranks {missing:?} in call {my_round} ({tag:?}); they may have issued fewer collectives")
            })?;
        }
        let outcome = state.outcome.clone().unwrap_or_else(|| Err("missing outcome".into()));
        state.num_taken += 1;
        if state.num_taken == self.shared.world_size {
            state.round += 1;
            state.num_taken = 0;
            state.outcome = None;
            state.contributions.iter_mut().for_each(|c| *c = None);
            self.shared.changed.notify_all();
        }
        if let Err(reason) = &outcome {
            state.poisoned.get_or_insert_with(|| reason.clone());
            self.shared.changed.notify_all();
        }
        drop(state);
        match outcome {
            Ok(t) => Ok(t.to_device(&device)?),
            Err(reason) => Err(collective_error(reason)),
        }
    }

    /// Checks that every rank issued the same call and computes the result.
    fn combine(&self, contributions: &[Option<Contribution>], round: u64) -> std::result::Result<Tensor, String> {
        let parts: Vec<&Contribution> = contributions.iter().flatten().collect();
        let first = parts[0];
        for (rank, part) in parts.iter().enumerate().skip(1) {
            let same = part.tag == first.tag && part.op == first.op && part.dtype == first.dtype;
            let same_shape = match first.op {
                CollectiveOp::AllReduceSum => part.dims == first.dims,
                CollectiveOp::AllGather { dim } => {
                    part.dims.len() == first.dims.len()
                        && dim < first.dims.len()
                        && part.dims.iter().zip(&first.dims).enumerate().all(|(d, (a, b))| d == dim || a == b)
                }
            };
            if !same || !same_shape {
                return Err(format!(
                    "collective call {round} differs between ranks (ranks must issue collectives in the same order): rank 0 issued {}, rank {rank} issued {}",
                    first.describe(),
                    part.describe()
                ));
            }
        }
        let tensors: Vec<&Tensor> = parts.iter().map(|p| &p.tensor).collect();
        let result = match first.op {
            CollectiveOp::AllReduceSum => tensors[1..].iter().try_fold(tensors[0].clone(), |sum, t| sum + *t),
            CollectiveOp::AllGather { dim } => Tensor::cat(&tensors, dim),
        };
        result.map_err(|e| format!("collective call {round} ({:?}): {e}", first.tag))
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_reduce_sum(&self, x: &Tensor, tag: CollectiveTag) -> Result<Tensor> {
        self.exchange(x, CollectiveOp::AllReduceSum, tag)
    }

    fn all_gather(&self, x: &Tensor, dim: usize, tag: CollectiveTag) -> Result<Tensor> {
        self.exchange(x, CollectiveOp::AllGather { dim }, tag)
    }

    fn abort(&self, reason: &str) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.poisoned.get_or_insert_with(|| format!("rank {} aborted: {reason}", self.rank));
            self.shared.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Runs `body(rank, handle)` on one thread per rank and returns their results in rank order.
    fn on_ranks<T: Send>(world_size: usize, timeout: Duration, body: impl Fn(&ThreadCollective) -> T + Sync) -> Vec<T> {
        let handles = ThreadGroup::connect(world_size, timeout).unwrap();
        std::thread::scope(|s| {
            let threads: Vec<_> = handles.iter().map(|h| s.spawn(|| body(h))).collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_sums_and_all_gather_concatenates_in_rank_order() {
        let results = on_ranks(3, TIMEOUT, |comm| {
            let mut outputs = Vec::new();
            for step in 0..20 {
                let x = Tensor::new(&[comm.rank() as f32, step as f32], &Device::Cpu).unwrap();
                let sum = comm.all_reduce_sum(&x, CollectiveTag::MlpOutput { layer_idx: step }).unwrap();
                let gathered = comm.all_gather(&x.unsqueeze(0).unwrap(), 0, CollectiveTag::Logits).unwrap();
                outputs.push((sum.to_vec1::<f32>().unwrap(), gathered.to_vec2::<f32>().unwrap()));
            }
            outputs
        });
        for outputs in &results {
            for (step, (sum, gathered)) in outputs.iter().enumerate() {
                assert_eq!(sum, &vec![3.0, 3.0 * step as f32]);
                let want: Vec<Vec<f32>> = (0..3).map(|r| vec![r as f32, step as f32]).collect();
                assert_eq!(gathered, &want);
            }
        }
    }

    #[test]
    fn mismatched_tags_fail_on_every_rank_and_poison_the_group() {
        let results = on_ranks(2, TIMEOUT, |comm| {
            let x = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
            let tag = match comm.rank() {
                0 => CollectiveTag::AttentionOutput { layer_idx: 0 },
                _ => CollectiveTag::MlpOutput { layer_idx: 0 },
            };
            let first = comm.all_reduce_sum(&x, tag).map(|_| ()).map_err(|e| e.to_string());
            let second = comm.all_reduce_sum(&x, CollectiveTag::Logits).map(|_| ());
            (first, second.is_err())
        });
        for (first, second_failed) in results {
            let message = first.unwrap_err();
            assert!(message.contains("same order") && message.contains("AttentionOutput") && message.contains("MlpOutput"), "{message}");
            assert!(second_failed, "a poisoned group must refuse later calls");
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let results = on_ranks(2, TIMEOUT, |comm| {
            let x = Tensor::zeros(2 + comm.rank(), DType::F32, &Device::Cpu).unwrap();
            comm.all_reduce_sum(&x, CollectiveTag::Logits).map(|_| ()).map_err(|e| e.to_string())
        });
        assert!(results.iter().all(|r| r.as_ref().is_err_and(|m| m.contains("shape"))), "{results:?}");
    }

    #[test]
    fn a_missing_call_times_out_instead_of_hanging() {
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let results = on_ranks(2, timeout, |comm| {
            let x = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
            comm.all_reduce_sum(&x, CollectiveTag::Logits).map_err(|e| e.to_string())?;
            if comm.rank() == 0 {
                // Rank 1 never issues this second call.
                comm.all_reduce_sum(&x, CollectiveTag::Logits).map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        });
        assert!(results[1].is_ok());
        let message = results[0].as_ref().unwrap_err();
        assert!(message.contains("timed out") && message.contains("[1]"), "{message}");
        assert!(started.elapsed() < timeout * 10, "took {:?}", started.elapsed());
    }

    #[test]
    fn an_aborted_rank_releases_the_others_before_the_timeout() {
        let timeout = Duration::from_secs(30);
        let started = Instant::now();
        let results = on_ranks(2, timeout, |comm| {
            if comm.rank() == 1 {
                comm.abort("bad batch");
                return Err("aborted".to_string());
            }
            let x = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
            comm.all_reduce_sum(&x, CollectiveTag::Logits).map(|_| ()).map_err(|e| e.to_string())
        });
        assert!(results[0].as_ref().is_err_and(|m| m.contains("bad batch")), "{results:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
