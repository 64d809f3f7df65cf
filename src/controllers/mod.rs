//! The controllers: everything that writes to the API server on its own, beside the webhook
//! that only answers. Each runs as a task on the background runtime ([`crate::background`]),
//! reads cluster state from [`crate::cluster`] and judges with [`crate::engine`]; none of them
//! is known to the layers below.
//!
//! - [`rollout`]: rolls the workloads whose configuration changed (in waves), and polls the
//!   Secrets it may not watch.
//! - [`audit`]: judges every existing workload into PolicyReports, metrics and Events.
//! - [`protection`]: the config guard's finalizers on ConfigMaps and Secrets that workloads read.
//! - [`followup`]: judges again, after their grace, workloads admitted while a Secret was missing.
//! - [`manage_webhooks`]: applies the webhook registration generated from the policies.
//! - [`tls_secret`]: keeps the serving certificate in a Secret the replicas share.
//! - [`lease`]: the leader election that decides which replica writes.
//!
//! Shared by them: [`failed_write_backoff`], how long a controller waits after failed writes.

pub mod audit;
pub mod followup;
pub mod lease;
pub mod manage_webhooks;
pub mod protection;
pub mod rollout;
pub mod tls_secret;

use std::time::Duration;

/// How long to wait before writing again to an object whose last `failures` writes failed:
/// 5 s, doubling, at most 5 minutes.
pub fn failed_write_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (Duration::from_secs(5) * 2u32.pow(doublings)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_writes_back_off_from_5_seconds_to_5_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| failed_write_backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
