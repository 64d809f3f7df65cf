//! The controllers' own runtime: the rollout controller, the Secret poller, the config guard and
//! the audit run on one worker thread of their own, scheduled `SCHED_BATCH` (Linux: never
//! preempting the webhook's threads on wake-up, yet with its fair share of CPU), with their own
//! API client, so a burst of rollouts or an audit yields to the webhook. Not `SCHED_IDLE`: on a
//! node whose CPU is busy, an idle-class thread gets almost nothing, and the config guard's
//! finalizer removal (a teardown) or a rollout would wait for minutes (in CI, under the
//! suite's load, the first comparison of an idle-class controller came late). BENCHMARKS.md,
//! "Admission answers while 200 workloads roll", measures what is left.
//!
//! Leader election stays on the webhook's runtime: its renewals are tiny and must not starve.

use tokio::runtime::{Builder, Handle};

/// Starts the runtime on a thread that lives as long as the process, and returns its handle.
pub fn runtime() -> std::io::Result<Handle> {
    let runtime = Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("confgate-controllers")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("confgate-controllers-driver".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

fn lower_priority() {
    lower_this_thread(Lower::Batch, "the controllers' thread");
}

/// How far a thread steps back from the webhook's threads.
#[derive(Debug, Clone, Copy)]
pub enum Lower {
    /// `SCHED_BATCH`: never preempts on wake-up, keeps its fair share.
    Batch,
    /// `SCHED_IDLE`: runs only on CPU nothing else wants.
    Idle,
}

/// Puts the calling thread in `policy` (Linux; elsewhere nothing), logging a refusal.
#[cfg(target_os = "linux")]
pub fn lower_this_thread(policy: Lower, what: &str) {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let normal = match policy {
        Lower::Batch => NormalThreadSchedulePolicy::Batch,
        Lower::Idle => NormalThreadSchedulePolicy::Idle,
    };
    if let Err(error) = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(normal),
    ) {
        tracing::warn!(?error, "cannot lower the priority of {what}");
    }
}

/// Puts the calling thread in `policy` (Linux; elsewhere nothing).
#[cfg(not(target_os = "linux"))]
pub fn lower_this_thread(_policy: Lower, _what: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_run_on_their_own_batch_scheduled_thread() {
        let handle = runtime().expect("a runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            #[cfg(target_os = "linux")]
            let policy = thread_priority::unix::thread_schedule_policy().ok();
            #[cfg(not(target_os = "linux"))]
            let policy: Option<()> = None;
            let _ = tx.send((name, format!("{policy:?}")));
        });
        let (name, policy) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the task ran");
        assert_eq!(name.as_deref(), Some("confgate-controllers"));
        #[cfg(target_os = "linux")]
        assert_eq!(policy, "Some(Normal(Batch))");
        let _ = policy;
    }
}
