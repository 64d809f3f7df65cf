//! Memory bounded by design. Two budgets:
//!
//! - **In flight** (server-wide): request bodies being read, parsed or evaluated at once may
//!   not add up to more than `--max-inflight-bytes`. A parsed review takes up to about 25 times
//!   its body in memory (tiny objects are the worst case, BENCHMARKS.md), so this budget is
//!   what bounds the process. A request that cannot get its share within [`QUEUE_WAIT`] is
//!   answered 503, and the apiserver applies the webhook's failurePolicy.
//! - **Per review**: a review whose objects have more containers than `--max-review-containers`
//!   is not evaluated, and one whose answer would carry more patch operations or bytes than
//!   allowed is not sent; either is answered as its webhook's failurePolicy says (see
//!   [`crate::server::service`]), never with an out-of-memory kill.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request may wait for its share of the in-flight budget.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The limits, from `confgate serve`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Request bodies in flight at once, in bytes.
    pub max_inflight_bytes: usize,
    /// Containers (init, regular, ephemeral; object and oldObject together) in one review.
    pub max_review_containers: usize,
    /// JSON Patch operations in one answer.
    pub max_patch_ops: usize,
    /// Bytes of one answer.
    pub max_answer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 7 * 1024 * 1024,
            max_inflight_bytes: 16 * 1024 * 1024,
            max_review_containers: 500,
            max_patch_ops: 10_000,
            max_answer_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Why the limits cannot work together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    /// One body could never fit in the in-flight budget.
    #[error(
        "--max-inflight-bytes ({inflight}) must be at least --max-body-bytes ({body}), or the largest reviews could never be answered"
    )]
    InflightBelowBody {
        /// --max-inflight-bytes.
        inflight: usize,
        /// --max-body-bytes.
        body: usize,
    },
}

impl Limits {
    /// Checks that the limits fit together.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_inflight_bytes < self.max_body_bytes {
            return Err(LimitsError::InflightBelowBody {
                inflight: self.max_inflight_bytes,
                body: self.max_body_bytes,
            });
        }
        Ok(())
    }
}

/// The server-wide in-flight budget, in KiB (a semaphore's permits are `u32`).
#[derive(Debug)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    capacity_kib: u32,
}

/// A share of the in-flight budget, given back when dropped.
#[derive(Debug)]
pub struct Share {
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let capacity_kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(capacity_kib as usize)),
            capacity_kib,
        }
    }

    /// A share for a body of `bytes` (at least 1 KiB, at most the whole budget), waiting up to
    /// `wait`; `None` when the budget stays taken.
    pub async fn acquire(&self, bytes: usize, wait: Duration) -> Option<Share> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity_kib.max(1));
        let acquire = self.permits.clone().acquire_many_owned(kib);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(Share { _permit: permit }),
            _ => None,
        }
    }

    /// Bytes currently taken.
    pub fn in_use_bytes(&self) -> usize {
        (self.capacity_kib as usize).saturating_sub(self.permits.available_permits()) * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_add_up_to_the_budget_and_come_back_when_dropped() {
        let budget = InFlight::new(10 * 1024);
        let first = budget.acquire(6 * 1024, Duration::ZERO).await;
        assert!(first.is_some());
        assert_eq!(budget.in_use_bytes(), 6 * 1024);
        assert!(
            budget
                .acquire(5 * 1024, Duration::from_millis(10))
                .await
                .is_none()
        );
        // Small requests still fit beside it.
        let small = budget.acquire(100, Duration::ZERO).await;
        assert!(small.is_some());
        assert_eq!(budget.in_use_bytes(), 7 * 1024);
        drop(first);
        assert!(budget.acquire(9 * 1024, Duration::ZERO).await.is_some());
        // A body larger than the whole budget takes all of it rather than never fitting.
        drop(small);
        assert!(budget.acquire(50 * 1024, Duration::ZERO).await.is_some());
    }

    #[test]
    fn the_in_flight_budget_holds_at_least_one_largest_body() {
        let limits = Limits {
            max_inflight_bytes: 1024,
            ..Limits::default()
        };
        assert_eq!(
            limits.validate(),
            Err(LimitsError::InflightBelowBody {
                inflight: 1024,
                body: 7 * 1024 * 1024
            })
        );
        assert_eq!(Limits::default().validate(), Ok(()));
    }
}
