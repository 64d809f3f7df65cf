//! Notifications of what the rollout controller does, to a generic JSON webhook (Slack's
//! incoming webhooks, and anything that accepts a `text` field): rollouts, holds, first waves
//! that passed or failed, and writes that failed. The URL is a credential (a Slack webhook URL
//! lets anyone post), so it comes from a Secret and is never logged.
//!
//! Notices are batched: at most one POST every [`BATCH`], listing up to [`LINES`] notices and
//! how many more, so 200 rollouts of one change are one message, not 200. The queue is bounded;
//! a full queue drops notices (counted in the log), and a POST that fails is not retried: a
//! notification never holds up the controller.

use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a batch is sent at most.
pub const BATCH: Duration = Duration::from_secs(5);
/// Notices listed in one message.
pub const LINES: usize = 20;
/// Notices waiting at most.
const QUEUE: usize = 1024;

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A workload was rolled.
    Rolled,
    /// A rollout is held (its configuration is incomplete).
    Held,
    /// A first wave was healthy: the other readers roll.
    WavePassed,
    /// A first wave failed: the change is held for the other readers.
    WaveFailed,
    /// A rollout write failed.
    WriteFailed,
}

impl Kind {
    /// `rolled`, `held`, ...: the `kind` field of a notice.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rolled => "rolled",
            Kind::Held => "held",
            Kind::WavePassed => "wave_passed",
            Kind::WaveFailed => "wave_failed",
            Kind::WriteFailed => "write_failed",
        }
    }

    fn mark(self) -> &'static str {
        match self {
            Kind::Rolled | Kind::WavePassed => "✅",
            Kind::Held => "⏸",
            Kind::WaveFailed | Kind::WriteFailed => "❌",
        }
    }
}

/// One notice: what, and a line a person can act on (names and keys, never values).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: Kind,
    pub text: String,
}

/// Where notices go; cheap to clone. [`Notifier::off`] sends nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Notice>>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn off() -> Self {
        Self { tx: None }
    }

    /// Queues a notice (dropped when the queue is full).
    pub fn send(&self, kind: Kind, text: impl Into<String>) {
        if let Some(tx) = &self.tx
            && tx
                .try_send(Notice {
                    kind,
                    text: text.into(),
                })
                .is_err()
        {
            tracing::debug!("notification queue full: a notice was dropped");
        }
    }
}

/// Where the webhook URL comes from.
#[derive(Clone)]
pub enum Url {
    /// This URL (tests).
    Fixed(String),
    /// Key `url` of this Secret, read before each batch (so a rotated URL is used at once).
    Secret {
        client: Client,
        namespace: String,
        name: String,
    },
}

impl Url {
    async fn resolve(&self) -> Result<String, String> {
        match self {
            Url::Fixed(url) => Ok(url.clone()),
            Url::Secret {
                client,
                namespace,
                name,
            } => {
                let api: Api<k8s_openapi::api::core::v1::Secret> =
                    Api::namespaced(client.clone(), namespace);
                let secret = api
                    .get(name)
                    .await
                    .map_err(|e| format!("cannot read Secret {namespace}/{name}: {e}"))?;
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get("url"))
                    .ok_or_else(|| format!("Secret {namespace}/{name} has no key \"url\""))?;
                String::from_utf8(bytes.0.clone())
                    .map(|s| s.trim().to_owned())
                    .map_err(|_| format!("key \"url\" of Secret {namespace}/{name} is not text"))
            }
        }
    }
}

/// The message for a batch: `text` (Slack's field) with one line per notice, up to [`LINES`],
/// and `notices` with every notice's kind and text for other receivers.
pub fn message(batch: &[Notice]) -> Value {
    let mut lines: Vec<String> = batch
        .iter()
        .take(LINES)
        .map(|n| format!("{} {}", n.kind.mark(), n.text))
        .collect();
    if batch.len() > LINES {
        lines.push(format!("… and {} more", batch.len() - LINES));
    }
    json!({
        "text": format!("confgate rollouts:\n{}", lines.join("\n")),
        "notices": batch.iter().map(|n| json!({"kind": n.kind.as_str(), "text": n.text})).collect::<Vec<_>>(),
    })
}

/// Starts the sender on the current runtime and returns the notifier that feeds it.
pub fn start(url: Url) -> Notifier {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(send_batches(url, rx));
    Notifier { tx: Some(tx) }
}

async fn send_batches(url: Url, mut rx: mpsc::Receiver<Notice>) {
    let http = match http_client() {
        Ok(http) => http,
        Err(error) => {
            tracing::warn!(%error, "notifications are off: no HTTP client");
            return;
        }
    };
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        tokio::time::sleep(BATCH).await;
        let mut batch = vec![first];
        while let Ok(notice) = rx.try_recv() {
            batch.push(notice);
        }
        let target = match url.resolve().await {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(%error, notices = batch.len(), "notifications not sent");
                continue;
            }
        };
        let sent = http.post(&target).json(&message(&batch)).send().await;
        match sent.and_then(reqwest::Response::error_for_status) {
            Ok(_) => tracing::debug!(notices = batch.len(), "notifications sent"),
            // Never the URL: it is a credential.
            Err(error) => {
                tracing::warn!(error = %error.without_url(), notices = batch.len(), "notifications not sent")
            }
        }
    }
}

/// An HTTPS client trusting the system's roots, with rustls and ring as the rest of confgate.
fn http_client() -> Result<reqwest::Client, String> {
    let config = crate::certs::client_tls().map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_slack_message_listing_its_notices() {
        let batch: Vec<Notice> = (0..23)
            .map(|i| Notice {
                kind: if i == 0 {
                    Kind::WaveFailed
                } else {
                    Kind::Rolled
                },
                text: format!("deployment shop/app-{i}"),
            })
            .collect();
        let message = message(&batch);
        let text = message["text"].as_str().unwrap();
        assert!(text.starts_with(
            "confgate rollouts:\n❌ deployment shop/app-0\n✅ deployment shop/app-1\n"
        ));
        assert!(
            text.ends_with("✅ deployment shop/app-19\n… and 3 more"),
            "{text}"
        );
        assert_eq!(message["notices"].as_array().unwrap().len(), 23);
        assert_eq!(
            message["notices"][0],
            json!({"kind": "wave_failed", "text": "deployment shop/app-0"})
        );
    }

    #[tokio::test]
    async fn notices_are_posted_in_batches_to_the_url() {
        use axum::{Json, Router, routing::post};
        let (got_tx, mut got_rx) = mpsc::channel::<Value>(8);
        let app = Router::new().route(
            "/hook",
            post(move |Json(body): Json<Value>| {
                let got_tx = got_tx.clone();
                async move {
                    let _ = got_tx.send(body).await;
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let notifier = start(Url::Fixed(format!("http://{addr}/hook")));
        notifier.send(
            Kind::Rolled,
            "deployment shop/web: configmap app-config: LOG_LEVEL",
        );
        notifier.send(
            Kind::Held,
            "deployment shop/api: configmap \"shop/app\" has no key \"B\"",
        );
        let body = tokio::time::timeout(Duration::from_secs(20), got_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            body["text"],
            "confgate rollouts:\n✅ deployment shop/web: configmap app-config: LOG_LEVEL\n⏸ deployment shop/api: configmap \"shop/app\" has no key \"B\""
        );
        Notifier::off().send(Kind::Rolled, "nothing happens");
    }
}
