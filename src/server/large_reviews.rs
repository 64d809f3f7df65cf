//! Threads of their own for large reviews, scheduled only when a core is otherwise idle.
//!
//! Parsing a 1.3 MB review is about 5 ms of CPU. On a small node that is long enough to make
//! small reviews wait for a core (BENCHMARKS.md: their p99 went from 0.7 to 3.5 ms at 20 large
//! reviews per second). The pool has `cores - 1` threads (at least one), so large reviews never
//! occupy every core, and on Linux each thread puts itself in `SCHED_IDLE`: the kernel runs it
//! only on a core nothing else wants and preempts it as soon as an async worker serving small
//! reviews wakes up. (Nice 19 was measured too; the scheduler still lets the niced thread finish
//! a slice first, and small reviews kept waiting for it.) When the node has spare CPU a large
//! review gets a whole core, so its own latency is unchanged; on a node whose cores are busy all
//! the time it waits, up to the request timeout.
//!
//! Its own pool because a thread cannot leave `SCHED_IDLE` again without privileges: tokio's
//! blocking pool is shared and its threads must stay at normal priority.

use parking_lot::Mutex;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

type Job = Box<dyn FnOnce() + Send>;

/// Why a job gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The job panicked (its result is lost; the pool keeps running).
    #[error("large-review job panicked")]
    Panicked,
    /// The pool is gone (no thread could be started, or it is shutting down).
    #[error("no thread available for large reviews")]
    Unavailable,
}

/// A fixed set of low-priority threads fed from one queue. Dropping the pool lets its threads
/// finish the queued jobs and exit.
pub struct LargeReviewPool {
    jobs: Mutex<Sender<Job>>,
    threads: usize,
}

impl LargeReviewPool {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("confgate-large-{i}"))
                .spawn(move || work(&queue));
            match spawned {
                Ok(_) => started += 1,
                Err(error) => tracing::error!(%error, "cannot start a thread for large reviews"),
            }
        }
        Self {
            jobs: Mutex::new(jobs),
            threads: started,
        }
    }

    /// How many threads are running.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on the pool and waits (without holding an async worker) for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        if self.threads == 0 {
            return Err(PoolError::Unavailable);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(job)));
        });
        self.jobs
            .lock()
            .send(job)
            .map_err(|_| PoolError::Unavailable)?;
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(PoolError::Panicked),
            Err(_) => Err(PoolError::Unavailable),
        }
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        // The lock is held only while waiting for the next job, not while running it.
        let next = queue.lock().recv();
        match next {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

fn lower_priority() {
    crate::background::lower_this_thread(crate::background::Lower::Idle, "a large-review thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        let pool = LargeReviewPool::new(1);
        assert_eq!(pool.threads(), 1);
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        let panicked = pool.run(|| -> u8 { panic!("boom") }).await;
        assert_eq!(panicked, Err(PoolError::Panicked));
        assert_eq!(pool.run(|| "still here").await, Ok("still here"));
    }

    #[tokio::test]
    async fn jobs_run_on_the_pools_threads_in_sched_idle() {
        #[cfg(target_os = "linux")]
        let caller = thread_priority::unix::thread_schedule_policy().ok();
        let pool = LargeReviewPool::new(2);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert!(
            name.as_ref()
                .ok()
                .and_then(|n| n.as_deref())
                .is_some_and(|n| n.starts_with("confgate-large-")),
            "{name:?}"
        );
        #[cfg(target_os = "linux")]
        {
            use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
            let policy = pool
                .run(|| thread_priority::unix::thread_schedule_policy().ok())
                .await;
            assert_eq!(
                policy,
                Ok(Some(ThreadSchedulePolicy::Normal(
                    NormalThreadSchedulePolicy::Idle
                )))
            );
            // The caller's thread keeps its policy.
            assert_eq!(thread_priority::unix::thread_schedule_policy().ok(), caller);
        }
    }
}
