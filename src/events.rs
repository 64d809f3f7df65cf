//! Kubernetes Events on workloads, as the rollout controller (`ConfigChanged`) and the audit
//! (`ConfigBroken`) publish them: one reporter, one way to name the workload, one bound on the
//! note.

use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The most bytes of a note kept (an Event note may hold 1 KiB).
const NOTE_BYTES: usize = 1000;

/// A recorder reporting as controller `confgate`, instance `$POD_NAME`.
pub fn recorder(client: Client) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "confgate".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    )
}

/// The workload an Event is about.
#[derive(Debug, Clone, Copy)]
pub struct On<'a> {
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `CronJob`.
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// Its uid.
    pub uid: &'a str,
}

/// `note` cut to [`NOTE_BYTES`] at a character boundary, marked with `…` when cut.
fn bounded(mut note: String) -> String {
    if note.len() > NOTE_BYTES {
        let mut end = NOTE_BYTES;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// Publishes an Event on a workload.
pub async fn publish(
    recorder: &Recorder,
    on: On<'_>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) -> kube::Result<()> {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: match on.kind {
            "ConfigMap" | "Secret" | "Pod" => Some("v1".to_owned()),
            kind => crate::workload::api_resource(kind).map(|r| r.api_version),
        },
        kind: Some(on.kind.to_owned()),
        name: Some(on.name.to_owned()),
        namespace: Some(on.namespace.to_owned()),
        uid: Some(on.uid.to_owned()).filter(|uid| !uid.is_empty()),
        ..Default::default()
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(bounded(note)),
        action: action.into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(NOTE_BYTES); // 2 bytes each
        let cut = bounded(long);
        assert_eq!(cut.len(), NOTE_BYTES + '…'.len_utf8());
        assert!(cut.ends_with("é…"));
    }
}
