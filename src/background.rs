//! The controllers' own runtime: the rollout controller, the Secret poller, the config guard and
//! the audit run on one worker thread of their own, scheduled `SCHED_IDLE` (Linux: it runs
//! only on CPU nothing else wants), with their own API client, so a burst of rollouts or an
//! audit waits for the webhook, not the other way round. Measured (BENCHMARKS.md, "Admission
//! answers while 200 workloads roll") shows what is left: the API server on the same cores.
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

#[cfg(target_os = "linux")]
fn lower_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(error) =
        set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, policy)
    {
        tracing::warn!(
            ?error,
            "cannot lower the priority of the controllers' thread"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_run_on_their_own_idle_scheduled_thread() {
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
        assert_eq!(policy, "Some(Normal(Idle))");
        let _ = policy;
    }
}
