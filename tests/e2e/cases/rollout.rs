//! The rollout controller on a real control plane, with client-side `kubectl` only: a change of
//! consumed configuration rolls the workload once (a new ReplicaSet), anything else rolls
//! nothing. There is no kubelet, so the tests mark Pods Ready themselves where a rollout must
//! finish before the next may start.

use super::{app_config, set_config_key, set_secret_key, web_deployment};
use crate::harness::{Confgate, Cx, Kubectl, Options, eventually};
use serde_json::Value;
use std::time::Duration;

/// The ReplicaSets of Deployment `name`.
async fn replica_sets(kubectl: &Kubectl, ns: &str, name: &str) -> usize {
    kubectl
        .get(ns, "replicasets")
        .await
        .and_then(|list| {
            Some(
                list["items"]
                    .as_array()?
                    .iter()
                    .filter(|rs| {
                        rs["metadata"]["ownerReferences"][0]["name"].as_str() == Some(name)
                    })
                    .count(),
            )
        })
        .unwrap_or(0)
}

/// Plays the kubelet: every Pod of the namespace Running and Ready.
async fn pods_ready(kubectl: &Kubectl, ns: &str) {
    let Some(list) = kubectl.get(ns, "pods").await else {
        return;
    };
    let ready = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"},{"type":"PodScheduled","status":"True"}]}}"#;
    for pod in list["items"].as_array().into_iter().flatten() {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let _ = kubectl
            .run(
                &[
                    "patch",
                    "pod",
                    name,
                    "-n",
                    ns,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    ready,
                ],
                None,
            )
            .await;
    }
}

/// Applies the app, and waits until its first rollout is done (Pods made Ready).
pub(super) async fn deployed(cx: &Cx, ns: &str, manifest: &str) -> Kubectl {
    let kubectl = cx.kubectl();
    kubectl.ok(&["apply", "-f", "-"], Some(manifest)).await;
    eventually(
        Duration::from_secs(30),
        "the first rollout finishes",
        || {
            let kubectl = kubectl.clone();
            let ns = ns.to_owned();
            async move {
                pods_ready(&kubectl, &ns).await;
                let d = kubectl.get(&ns, "deployment/web").await?;
                (d["status"]["readyReplicas"] == 1 && d["status"]["updatedReplicas"] == 1)
                    .then_some(())
            }
        },
    )
    .await;
    kubectl
}

/// Waits (at most `limit`) until Deployment `web` has `count` ReplicaSets.
async fn reaches(kubectl: &Kubectl, ns: &str, count: usize, limit: Duration, what: &str) {
    eventually(limit, what, || {
        let kubectl = kubectl.clone();
        let ns = ns.to_owned();
        async move { (replica_sets(&kubectl, &ns, "web").await == count).then_some(()) }
    })
    .await;
}

/// Waits `quiet` and asserts the Deployment still has `count` ReplicaSets.
async fn stays(kubectl: &Kubectl, ns: &str, count: usize, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    assert_eq!(replica_sets(kubectl, ns, "web").await, count);
}

pub async fn e2e_a_changed_consumed_key_rolls_the_workload_once(cx: Cx) {
    let ns = cx.namespace("rollout-consumed").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    assert_eq!(replica_sets(&kubectl, &ns, "web").await, 1);
    let before = kubectl.get(&ns, "deployment/web").await.unwrap();
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(10),
        "a new ReplicaSet",
    )
    .await;
    let after = kubectl.get(&ns, "deployment/web").await.unwrap();
    let checksum =
        |d: &Value| d["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone();
    assert_ne!(checksum(&before), checksum(&after));
    // The write was the controller's (field manager confgate), and nothing else followed.
    stays(&kubectl, &ns, 2, Duration::from_secs(5)).await;
    // The Event names what changed: the init container takes every key (envFrom).
    let notes = event_notes(&kubectl, &ns, "ConfigChanged").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("the configuration it consumes changed (configmap app-config: LOG_LEVEL); rolling: checksum/config "),
        "{notes:?}"
    );
    assert_eq!(
        confgate
            .metric("confgate_rollouts_total{result=\"triggered\"}")
            .await,
        1.0
    );
}

pub async fn e2e_an_unconsumed_key_or_an_opted_out_workload_rolls_nothing(cx: Cx) {
    let ns = cx.namespace("rollout-unconsumed").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // Consumes DATABASE_URL only.
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: nginx
        env:
        - name: DATABASE_URL
          valueFrom: {{configMapKeyRef: {{name: app-config, key: DATABASE_URL}}}}
"#
    );
    let kubectl = deployed(&cx, &ns, &manifest).await;
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    stays(&kubectl, &ns, 1, Duration::from_secs(15)).await;
    // Opted out: even a consumed key rolls nothing.
    kubectl
        .ok(
            &[
                "annotate",
                "deployment",
                "web",
                "-n",
                &ns,
                "confgate.dev/rollout=false",
            ],
            None,
        )
        .await;
    set_config_key(
        &kubectl,
        &ns,
        "app-config",
        "DATABASE_URL",
        "postgres://other",
    )
    .await;
    stays(&kubectl, &ns, 1, Duration::from_secs(15)).await;
}

pub async fn e2e_a_restart_rolls_nothing_and_a_change_while_down_rolls_once(cx: Cx) {
    let ns = cx.namespace("rollout-restart").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let mut confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    // A restart with nothing changed: nothing rolls.
    confgate.restart(&cx).await;
    stays(&kubectl, &ns, 1, Duration::from_secs(5)).await;
    // Changed while confgate is down: rolls once it is back.
    confgate.stop();
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "warn").await;
    stays(&kubectl, &ns, 1, Duration::from_secs(2)).await;
    confgate.restart(&cx).await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(20),
        "the rollout after confgate is back",
    )
    .await;
    stays(&kubectl, &ns, 2, Duration::from_secs(3)).await;
}

pub async fn e2e_two_replicas_write_one_rollout_per_change(cx: Cx) {
    let ns = cx.namespace("rollout-two-replicas").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    // Two replicas on one Lease; the apiserver calls the first (both would answer alike).
    let first = Confgate::start(&cx, Options::shipped(&ns)).await;
    let second = Confgate::start(&cx, Options::shipped(&ns).unregistered()).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    let lease = eventually(Duration::from_secs(30), "a holder of the Lease", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let lease = kubectl.get(&ns, "lease/confgate-rollout").await?;
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        }
    })
    .await;
    assert!(!lease.is_empty());
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "trace").await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(10),
        "a new ReplicaSet",
    )
    .await;
    stays(&kubectl, &ns, 2, Duration::from_secs(5)).await;
    let triggered = "confgate_rollouts_total{result=\"triggered\"}";
    let writes = first.metric(triggered).await + second.metric(triggered).await;
    assert_eq!(writes, 1.0, "exactly one replica wrote");
}

pub async fn e2e_a_stuck_rollout_does_not_hold_the_fix(cx: Cx) {
    let ns = cx.namespace("rollout-stuck").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let options = Options::shipped(&ns)
        .arg("--rollout-stuck-seconds=5")
        .arg("--rollout-min-interval-seconds=0");
    let confgate = Confgate::start(&cx, options).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    // A bad edit: the new Pods never become ready (no one plays the kubelet for them).
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "bogus").await;
    reaches(&kubectl, &ns, 2, Duration::from_secs(15), "the bad rollout").await;
    eventually(
        Duration::from_secs(15),
        "the bad rollout under way",
        || async {
            let d = kubectl.get(&ns, "deployment/web").await?;
            (d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && d["status"]["updatedReplicas"] == 1
                && d["status"]["replicas"] == 2)
                .then_some(())
        },
    )
    .await;
    // The fix (a value not seen before), while that rollout is stuck: it goes out once the
    // rollout has not moved for 5 s.
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "warn").await;
    reaches(&kubectl, &ns, 3, Duration::from_secs(30), "the fix rolled").await;
    let triggered = "confgate_rollouts_total{result=\"triggered\"}";
    assert_eq!(confgate.metric_reaches(triggered, 2.0).await, 2.0);
    stays(&kubectl, &ns, 3, Duration::from_secs(3)).await;
    assert_eq!(confgate.metric(triggered).await, 2.0);
}

pub async fn e2e_a_config_map_that_opted_out_rolls_none_of_its_readers(cx: Cx) {
    let ns = cx.namespace("rollout-config-opt-out").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let kubectl = cx.kubectl();
    // As a platform injects into every namespace: its changes must never roll the readers.
    kubectl
        .ok(
            &[
                "annotate",
                "configmap",
                "app-config",
                "-n",
                &ns,
                "confgate.dev/rollout=false",
            ],
            None,
        )
        .await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    set_config_key(
        &kubectl,
        &ns,
        "app-config",
        "DATABASE_URL",
        "postgres://other",
    )
    .await;
    stays(&kubectl, &ns, 1, Duration::from_secs(10)).await;
    // The Secret it also reads still rolls it.
    set_secret_key(&kubectl, &ns, "app-secret", "API_KEY", "rotated").await;
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(15),
        "a rollout for the Secret",
    )
    .await;
}

/// True when `confgate` logged that it leads now (its last leadership line; JSON logs).
fn leads(confgate: &Confgate) -> bool {
    confgate
        .log_tail(400)
        .lines()
        .rfind(|l| l.contains("leadership changed"))
        .is_some_and(|l| l.contains("\"leading\":true"))
}

pub async fn e2e_a_deleted_lease_is_recreated_and_a_standby_takes_over(cx: Cx) {
    let ns = cx.namespace("rollout-lease").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let mut first = Confgate::start(&cx, Options::shipped(&ns)).await;
    let mut second = Confgate::start(&cx, Options::shipped(&ns).unregistered()).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    let holder = || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let lease = kubectl.get(&ns, "lease/confgate-rollout").await?;
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        }
    };
    let held = eventually(Duration::from_secs(30), "a holder of the Lease", holder).await;
    eventually(
        Duration::from_secs(10),
        "one replica says it leads",
        || async { (leads(&first) != leads(&second)).then_some(()) },
    )
    .await;
    // A cleanup script deletes the Lease: its holder creates it again, and still leads alone.
    kubectl
        .ok(&["-n", &ns, "delete", "lease", "confgate-rollout"], None)
        .await;
    let again = eventually(Duration::from_secs(15), "the Lease again", holder).await;
    assert_eq!(again, held, "the holder created it again");
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "trace").await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(15),
        "a new ReplicaSet",
    )
    .await;
    let triggered = "confgate_rollouts_total{result=\"triggered\"}";
    assert_eq!(
        first.metric(triggered).await + second.metric(triggered).await,
        1.0,
        "exactly one replica wrote"
    );
    // The leader goes away: the standby takes over and rolls the next change.
    let (leader, standby) = if leads(&first) {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    leader.stop();
    if leader.registration.is_some() {
        // The apiserver called the leader; in a cluster the Service now sends to the standby.
        standby.register().await;
    }
    pods_ready(&kubectl, &ns).await;
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "warn").await;
    reaches(
        &kubectl,
        &ns,
        3,
        Duration::from_secs(45),
        "a rollout by the standby",
    )
    .await;
    assert_eq!(standby.metric(triggered).await, 1.0, "the standby wrote it");
    let taken = eventually(Duration::from_secs(5), "the new holder", holder).await;
    assert_ne!(taken, held);
}

pub async fn e2e_a_deleted_required_config_map_rolls_nothing(cx: Cx) {
    let ns = cx.namespace("rollout-deleted").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    // Deleted while a Deployment reads it: as in a cluster without the config guard.
    let _confgate = Confgate::start(
        &cx,
        Options::shipped(&ns).without("protect-config-keys.yaml"),
    )
    .await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    // New Pods could not start without it; the old ones keep running.
    kubectl
        .ok(&["delete", "configmap", "app-config", "-n", &ns], None)
        .await;
    stays(&kubectl, &ns, 1, Duration::from_secs(15)).await;
}

pub async fn e2e_a_missing_required_key_holds_the_rollout_until_it_is_back(cx: Cx) {
    let ns = cx.namespace("rollout-missing-key").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    // The key removed while a Deployment reads it: as in a cluster without the config guard.
    let confgate = Confgate::start(
        &cx,
        Options::shipped(&ns).without("protect-config-keys.yaml"),
    )
    .await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    // `web` reads DATABASE_URL with a configMapKeyRef: new Pods could not start without it.
    let run = super::remove_config_key(&kubectl, &ns, "DATABASE_URL").await;
    assert!(run.success, "{}", run.stderr);
    let notes = eventually(Duration::from_secs(20), "a RolloutHeld Event", || async {
        let notes = event_notes(&kubectl, &ns, "RolloutHeld").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(
        notes,
        vec![format!(
            "not rolled: its new Pods could not start: configmap \"{ns}/app-config\" has no key \"DATABASE_URL\"; it rolls once the configuration is whole again"
        )]
    );
    stays(&kubectl, &ns, 1, Duration::from_secs(5)).await;
    assert!(
        confgate
            .metric("confgate_rollouts_total{result=\"held\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        confgate
            .metric("confgate_rollouts_held{reason=\"config_missing\"}")
            .await,
        1.0
    );
    // Back (with a new value): it rolls, once.
    set_config_key(
        &kubectl,
        &ns,
        "app-config",
        "DATABASE_URL",
        "postgres://db2/shop",
    )
    .await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(15),
        "a new ReplicaSet",
    )
    .await;
    stays(&kubectl, &ns, 2, Duration::from_secs(5)).await;
    // Its rollout went out as soon as the change was seen, and nothing is held any more.
    assert_eq!(
        confgate
            .metric("confgate_rollout_change_to_write_seconds_count")
            .await,
        1.0
    );
    assert_eq!(
        confgate
            .metric("confgate_rollouts_held{reason=\"config_missing\"}")
            .await,
        0.0
    );
}

/// The `ConfigChanged` notes of the namespace once there are at least `count` (an Event follows
/// its write by a moment).
async fn config_changed(kubectl: &Kubectl, ns: &str, count: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(10),
        "the ConfigChanged Events",
        || async {
            let notes = event_notes(kubectl, ns, "ConfigChanged").await;
            (notes.len() >= count).then_some(notes)
        },
    )
    .await
}

/// The Events of `ns` that match a field `selector` (`reason=ConfigChanged`), as listed.
pub(crate) async fn events(kubectl: &Kubectl, ns: &str, selector: &str) -> Vec<Value> {
    let out = kubectl
        .ok(
            &[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                selector,
                "-o",
                "json",
            ],
            None,
        )
        .await;
    let list: Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The Event notes of `reason` in the namespace.
pub(crate) async fn event_notes(kubectl: &Kubectl, ns: &str, reason: &str) -> Vec<String> {
    events(kubectl, ns, &format!("reason={reason}"))
        .await
        .iter()
        .filter_map(|e| e["message"].as_str().or(e["note"].as_str()))
        .map(str::to_owned)
        .collect()
}

fn template_annotation(d: &Value, key: &str) -> Value {
    d["spec"]["template"]["metadata"]["annotations"][key].clone()
}

pub async fn e2e_a_config_map_and_its_deployment_applied_together_roll_once(cx: Cx) {
    let ns = cx.namespace("rollout-together").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    // One directory, the ConfigMap's file sorting first: kubectl writes it, then the
    // Deployment (a changed consumed key, and a changed template).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a-config.yaml"),
        app_config(&ns).replace("LOG_LEVEL: info", "LOG_LEVEL: debug"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b-deployment.yaml"),
        web_deployment(&ns, "web", &["{name: FEATURE_X, value: \"on\"}"]),
    )
    .unwrap();
    kubectl
        .ok(&["apply", "-f", &dir.path().to_string_lossy()], None)
        .await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(10),
        "the new ReplicaSet",
    )
    .await;
    stays(&kubectl, &ns, 2, Duration::from_secs(8)).await;
    // The Deployment's own write carried the new checksum; the controller wrote nothing.
    assert_eq!(
        confgate
            .metric("confgate_rollouts_total{result=\"triggered\"}")
            .await,
        0.0
    );
}

pub async fn e2e_a_chart_managed_checksum_is_left_alone_and_confgate_stamps_its_own(cx: Cx) {
    let ns = cx.namespace("rollout-chart").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // As a Helm chart renders it: `checksum/config: {{ include ... | sha256sum }}`.
    let chart = web_deployment(&ns, "web", &[]).replace(
        "    metadata: {labels: {app: web}}",
        "    metadata: {labels: {app: web}, annotations: {checksum/config: chart-1111}}",
    );
    assert!(chart.contains("chart-1111"));
    let applied = cx.kubectl().run(&["apply", "-f", "-"], Some(&chart)).await;
    assert!(
        applied.stderr.contains("checksum-config: checksum/config is managed by \"kubectl-client-side-apply\" (the manifest sets it); confgate leaves it alone and stamps confgate.dev/config-checksum instead"),
        "{}",
        applied.stderr
    );
    let kubectl = deployed(&cx, &ns, &chart).await;
    let before = kubectl.get(&ns, "deployment/web").await.unwrap();
    assert_eq!(
        template_annotation(&before, "checksum/config"),
        "chart-1111"
    );
    let own = template_annotation(&before, "confgate.dev/config-checksum");
    assert_eq!(own.as_str().map(str::len), Some(64), "{before}");
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(10),
        "a new ReplicaSet",
    )
    .await;
    let after = kubectl.get(&ns, "deployment/web").await.unwrap();
    assert_eq!(template_annotation(&after, "checksum/config"), "chart-1111");
    assert_ne!(
        template_annotation(&after, "confgate.dev/config-checksum"),
        own
    );
    // Re-applying the chart's manifest changes nothing: no fight over either annotation.
    let reapplied = kubectl.ok(&["apply", "-f", "-"], Some(&chart)).await;
    assert!(reapplied.contains("unchanged"), "{reapplied}");
    stays(&kubectl, &ns, 2, Duration::from_secs(3)).await;
}

pub async fn e2e_a_secret_change_rolls_when_secrets_are_watched(cx: Cx) {
    a_secret_change_rolls(cx, "--secrets=watch", Duration::from_secs(10)).await;
}

/// The default `--secrets get` (no list or watch of Secrets): the referenced Secrets are read
/// by name every `--secret-poll-seconds` (45 by default; 5 here).
pub async fn e2e_a_secret_rotation_rolls_without_watching_secrets(cx: Cx) {
    a_secret_change_rolls(cx, "--secret-poll-seconds=5", Duration::from_secs(20)).await;
}

/// A change of a Secret key the Deployment reads rolls it once, naming the key, never the
/// value; a key it does not read rolls nothing.
async fn a_secret_change_rolls(cx: Cx, arg: &str, limit: Duration) {
    let ns = cx.namespace("rollout-secret").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns).arg(arg)).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    // A key the Deployment does not consume: nothing.
    set_secret_key(&kubectl, &ns, "app-secret", "magicWord", "plugh").await;
    stays(&kubectl, &ns, 1, limit / 2).await;
    set_secret_key(&kubectl, &ns, "app-secret", "API_KEY", "rotated").await;
    reaches(&kubectl, &ns, 2, limit, "a new ReplicaSet").await;
    let notes = config_changed(&kubectl, &ns, 1).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("the configuration it consumes changed (secret app-secret: API_KEY); rolling: checksum/config "),
        "{notes:?}"
    );
    assert!(!notes[0].contains("rotated") && !notes[0].contains("s3cr3t"));
}

pub async fn e2e_a_statefulset_rolls_and_a_cronjob_stamps_its_next_job(cx: Cx) {
    let ns = cx.namespace("rollout-kinds").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    // The shipped checksum policy, stamping CronJobs too.
    let policy =
        std::fs::read_to_string(crate::harness::root().join("policies/checksum-config.yaml"))
            .unwrap()
            .replace("    # kinds: [Job, CronJob]", "    kinds: [CronJob]");
    assert!(policy.contains("    kinds: [CronJob]"));
    let _confgate = Confgate::start(&cx, Options::with_policies(&ns, &policy)).await;
    let kubectl = cx.kubectl();
    let manifests = format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: cache, namespace: {ns}}}
spec:
  replicas: 0
  serviceName: cache
  selector: {{matchLabels: {{app: cache}}}}
  template:
    metadata: {{labels: {{app: cache}}}}
    spec:
      containers:
      - name: cache
        image: registry.example/cache:1
        envFrom: [{{configMapRef: {{name: app-config}}}}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: report, namespace: {ns}}}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: report
            image: registry.example/report:1
            env:
            - name: LOG_LEVEL
              valueFrom: {{configMapKeyRef: {{name: app-config, key: LOG_LEVEL}}}}
"#
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&manifests)).await;
    let stamped = |kind: &'static str| {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let o = kubectl.get(&ns, kind).await?;
            let template = if kind.starts_with("cronjob") {
                &o["spec"]["jobTemplate"]["spec"]["template"]
            } else {
                &o["spec"]["template"]
            };
            template["metadata"]["annotations"]["checksum/config"]
                .as_str()
                .map(str::to_owned)
        }
    };
    let (sts, cron) = (
        stamped("statefulset/cache").await.expect("stamped"),
        stamped("cronjob/report").await.expect("stamped"),
    );
    // Wait until the StatefulSet controller has seen it (0 replicas: at once).
    eventually(Duration::from_secs(20), "the StatefulSet observed", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let s = kubectl.get(&ns, "statefulset/cache").await?;
            (s["status"]["observedGeneration"] == s["metadata"]["generation"]).then_some(())
        }
    })
    .await;
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    eventually(Duration::from_secs(10), "both written", || {
        let (sts, cron) = (sts.clone(), cron.clone());
        async move {
            let now = (
                stamped("statefulset/cache").await?,
                stamped("cronjob/report").await?,
            );
            (now.0 != sts && now.1 != cron).then_some(())
        }
    })
    .await;
    let notes = config_changed(&kubectl, &ns, 2).await;
    assert_eq!(notes.len(), 2, "{notes:?}");
    for note in notes {
        assert!(
            note.starts_with("the configuration it consumes changed (configmap app-config: LOG_LEVEL); rolling: checksum/config "),
            "{note}"
        );
    }
}

/// Deployment `name` (0 replicas: its rollouts finish at once) mounting ConfigMap `files` as a
/// volume, with these workload annotations (a YAML flow mapping's entries).
fn file_reader(ns: &str, name: &str, annotations: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
  annotations: {{{annotations}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: registry.example/app:1
        volumeMounts: [{{name: files, mountPath: /etc/app}}]
      volumes:
      - name: files
        configMap: {{name: files}}
"#
    )
}

pub async fn e2e_a_named_dependency_rolls_and_reloaded_files_do_not(cx: Cx) {
    let ns = cx.namespace("rollout-named-deps").await;
    let kubectl = cx.kubectl();
    let config = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: files, namespace: {ns}}}\ndata: {{app.yaml: 'a: 1'}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: feature-flags, namespace: {ns}}}\ndata: {{NEW_UI: 'off'}}\n"
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&config)).await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // `named` reads feature-flags although its pod spec does not (the app fetches it from the
    // API); `reloads` reloads the files it mounts by itself.
    let apps = [
        file_reader(
            &ns,
            "named",
            "confgate.dev/extra-configmaps: feature-flags, confgate.dev/mounted-files-reload: 'true'",
        ),
        file_reader(&ns, "reloads", "confgate.dev/mounted-files-reload: 'true'"),
        file_reader(&ns, "plain", ""),
    ]
    .join("---\n");
    kubectl.ok(&["apply", "-f", "-"], Some(&apps)).await;
    let count = |name: &'static str| {
        let (kubectl, ns) = (kubectl.clone(), ns.clone());
        async move { replica_sets(&kubectl, &ns, name).await }
    };
    eventually(Duration::from_secs(20), "the first ReplicaSets", || async {
        (count("named").await == 1 && count("reloads").await == 1 && count("plain").await == 1)
            .then_some(())
    })
    .await;
    // The named dependency changes: only `named` rolls, and the Event says why.
    set_config_key(&kubectl, &ns, "feature-flags", "NEW_UI", "on").await;
    eventually(Duration::from_secs(15), "named rolls", || async {
        (count("named").await == 2).then_some(())
    })
    .await;
    let notes = config_changed(&kubectl, &ns, 1).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with(
            "the configuration it consumes changed (configmap feature-flags: NEW_UI); rolling: "
        ),
        "{notes:?}"
    );
    // The mounted file changes: only the workload that does not reload files rolls.
    set_config_key(&kubectl, &ns, "files", "app.yaml", "a: 2").await;
    eventually(Duration::from_secs(15), "plain rolls", || async {
        (count("plain").await == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        (
            count("named").await,
            count("reloads").await,
            count("plain").await
        ),
        (2, 1, 2)
    );
}

pub async fn e2e_an_argo_rollout_is_stamped_and_rolled_when_its_crd_is_installed(cx: Cx) {
    let ns = cx.namespace("rollout-argo").await;
    let kubectl = cx.kubectl();
    let crd = crate::harness::root().join("tests/fixtures/crds/argo-rollouts.yaml");
    kubectl
        .ok(&["apply", "-f", crd.to_str().unwrap()], None)
        .await;
    kubectl
        .ok(
            &[
                "wait",
                "--for=condition=Established",
                "crd/rollouts.argoproj.io",
                "--timeout=30s",
            ],
            None,
        )
        .await;
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let rollout = format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{canary: {{steps: [{{setWeight: 20}}, {{pause: {{duration: 10}}}}]}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: registry.example/shop/web:1.4.2
        env:
        - name: LOG_LEVEL
          valueFrom: {{configMapKeyRef: {{name: app-config, key: LOG_LEVEL}}}}
"#
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&rollout)).await;
    let stamped = |r: &Value| template_annotation(r, "checksum/config");
    let first = kubectl.get(&ns, "rollout/web").await.unwrap();
    assert!(
        stamped(&first).is_string(),
        "the webhook stamps a Rollout: {first}"
    );
    // Plays the Argo Rollouts controller: the rollout is done.
    let healthy = |generation: &Value| {
        serde_json::json!({"status": {"observedGeneration": generation.to_string(), "phase": "Healthy",
            "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}})
        .to_string()
    };
    kubectl
        .ok(
            &[
                "patch",
                "rollout",
                "web",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &healthy(&first["metadata"]["generation"]),
            ],
            None,
        )
        .await;
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    let rolled = eventually(Duration::from_secs(20), "the Rollout rolled", || {
        let (kubectl, ns, before) = (kubectl.clone(), ns.clone(), stamped(&first));
        async move {
            let now = kubectl.get(&ns, "rollout/web").await?;
            (template_annotation(&now, "checksum/config") != before).then_some(now)
        }
    })
    .await;
    assert_eq!(rolled["metadata"]["generation"], 2);
    let notes = config_changed(&kubectl, &ns, 1).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with(
            "the configuration it consumes changed (configmap app-config: LOG_LEVEL); rolling: "
        ),
        "{notes:?}"
    );
    assert_eq!(
        confgate
            .metric("confgate_rollouts_total{result=\"triggered\"}")
            .await,
        1.0
    );
}

/// A leader frozen (SIGSTOP) past its Lease: the standby takes over and writes the next
/// rollout; the frozen one, resumed, writes nothing (it checks its renewal deadline before
/// every write), so the change rolls once.
pub async fn e2e_a_leader_frozen_past_its_lease_writes_nothing_when_it_resumes(cx: Cx) {
    let ns = cx.namespace("rollout-frozen-leader").await;
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    // The replica that will freeze leads first; the apiserver calls the other one, so admission
    // never waits for the frozen process.
    let frozen = Confgate::start(&cx, Options::shipped(&ns).unregistered()).await;
    eventually(
        Duration::from_secs(30),
        "the first replica leads",
        || async { leads(&frozen).then_some(()) },
    )
    .await;
    let standby = Confgate::start(&cx, Options::shipped(&ns)).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    let pid = frozen.pid().expect("running");
    crate::harness::process::signal(pid, "STOP");
    eventually(
        Duration::from_secs(45),
        "the standby takes over",
        || async { leads(&standby).then_some(()) },
    )
    .await;
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "warn").await;
    reaches(
        &kubectl,
        &ns,
        2,
        Duration::from_secs(15),
        "a new ReplicaSet",
    )
    .await;
    crate::harness::process::signal(pid, "CONT");
    // Resumed with the change still in its queue and its Lease long lost: nothing more.
    stays(&kubectl, &ns, 2, Duration::from_secs(10)).await;
    let triggered = "confgate_rollouts_total{result=\"triggered\"}";
    assert_eq!(
        frozen.metric(triggered).await,
        0.0,
        "the frozen replica wrote"
    );
    assert_eq!(standby.metric(triggered).await, 1.0);
}

/// confgate set up in `ns` exactly as the chart renders it with `sets`: its ServiceAccount and
/// roles applied as rendered, a kubeconfig with that account's token, and the shipped
/// `checksum-config` and `require-config-keys` policies and name arguments from the render.
struct Rendered {
    _dir: tempfile::TempDir,
    /// `system:serviceaccount:NS:ACCOUNT`, for `kubectl auth can-i --as`.
    account: String,
    options: Options,
    /// The rendered checksum-config policy, as given to confgate.
    checksum_policy: String,
}

async fn as_the_chart_renders(cx: &Cx, ns: &str, sets: &[&str]) -> Rendered {
    let kubectl = cx.kubectl();
    let mut args = vec!["template", ns];
    let chart = crate::harness::root().join("charts/confgate");
    let chart = chart.to_string_lossy().into_owned();
    args.push(&chart);
    args.extend(["--namespace", ns]);
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = std::process::Command::new(super::helm_chart::helm_binary())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = confgate::yaml::documents(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let rbac: Vec<Value> = docs
        .iter()
        .filter(|d| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&d["kind"].as_str().unwrap_or_default())
        })
        .cloned()
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": rbac});
    kubectl
        .ok(&["apply", "-f", "-"], Some(&list.to_string()))
        .await;
    let account = format!("{ns}-confgate");
    let token = kubectl
        .ok(&["create", "token", &account, "-n", ns], None)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("sa-kubeconfig");
    crate::harness::control_plane::write_kubeconfig(&kubeconfig, &cx.plane.server, token.trim())
        .unwrap();
    let policies = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == format!("{account}-policies")
        })
        .unwrap();
    // The chart leaves its own namespace out of every policy; here the workloads live in it.
    let text: Vec<String> = ["checksum-config.yaml", "require-config-keys.yaml"]
        .iter()
        .map(|f| {
            let text = policies["data"][f].as_str().unwrap();
            assert!(text.contains(&format!(", {ns}]")), "{text}");
            text.replace(&format!(", {ns}]"), "]")
        })
        .collect();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let mut options = Options::with_policies(ns, &text.join("\n---\n")).kubeconfig(&kubeconfig);
    for arg in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
    {
        if [
            "--lease-name=",
            "--checksum-key-secret=",
            "--secrets=",
            "--owner-",
        ]
        .iter()
        .any(|p| arg.starts_with(p))
        {
            options = options.arg(arg);
        }
    }
    Rendered {
        _dir: dir,
        account: format!("system:serviceaccount:{ns}:{account}"),
        options: options.arg("--audit-interval=10m"),
        checksum_policy: text[0].clone(),
    }
}

/// `kubectl auth can-i VERB RESOURCE --as ACCOUNT -A` for each row, as expected.
async fn can(kubectl: &Kubectl, account: &str, rows: &[(&str, &str, &str)]) {
    for (verb, resource, expected) in rows {
        let run = kubectl
            .run(
                &["auth", "can-i", verb, resource, "--as", account, "-A"],
                None,
            )
            .await;
        assert_eq!(run.stdout.trim(), *expected, "{verb} {resource}");
    }
}

/// With rollouts off (`rollout.enabled=false`), confgate runs under exactly the RBAC the chart
/// renders for that feature set: it may not patch any workload, and it still becomes ready,
/// stamps the checksum at admission, audits, and guards, while a ConfigMap edit rolls nothing
/// and no write is even tried.
pub async fn e2e_with_rollouts_off_confgate_works_under_the_rbac_the_chart_renders_for_it(cx: Cx) {
    let ns = cx.namespace("rbac-no-rollouts").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let rendered = as_the_chart_renders(&cx, &ns, &["rollout.enabled=false"]).await;
    can(
        &kubectl,
        &rendered.account,
        &[
            ("patch", "deployments.apps", "no"),
            ("patch", "statefulsets.apps", "no"),
            ("patch", "cronjobs.batch", "no"),
            ("list", "deployments.apps", "yes"),
            ("watch", "deployments.apps", "yes"),
            ("patch", "configmaps", "yes"),
        ],
    )
    .await;
    assert!(
        rendered.checksum_policy.contains("rollout: false"),
        "{}",
        rendered.checksum_policy
    );
    let confgate = Confgate::start(&cx, rendered.options).await;
    let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    let web = kubectl.get(&ns, "deployment/web").await.unwrap();
    assert_eq!(
        template_annotation(&web, "checksum/config")
            .as_str()
            .map(str::len),
        Some(64),
        "stamped at admission: {web}"
    );
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    stays(&kubectl, &ns, 1, Duration::from_secs(8)).await;
    eventually(Duration::from_secs(30), "an audit", || {
        let done = confgate.log_tail(4000).contains("audit done");
        async move { done.then_some(()) }
    })
    .await;
    let log = confgate.log_tail(4000);
    assert!(
        !log.contains("forbidden") && !log.contains("rollout failed"),
        "a write was tried, or refused:\n{log}"
    );
}

/// Each secrets mode under the RBAC the chart renders for it: `get` reads Secrets by name and
/// may not list them, yet judges a missing Secret key; `watch` may list and watch them, and a
/// rotated Secret rolls its reader. Neither is refused anything it tries.
pub async fn e2e_each_secrets_mode_works_under_the_rbac_the_chart_renders_for_it(cx: Cx) {
    for (mode, listed) in [("get", "no"), ("watch", "yes")] {
        let ns = cx.namespace(&format!("rbac-secrets-{mode}")).await;
        let kubectl = cx.kubectl();
        kubectl
            .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
            .await;
        let rendered = as_the_chart_renders(&cx, &ns, &[&format!("secrets={mode}")]).await;
        can(
            &kubectl,
            &rendered.account,
            &[
                ("get", "secrets", "yes"),
                ("list", "secrets", listed),
                ("watch", "secrets", listed),
                ("patch", "deployments.apps", "yes"),
            ],
        )
        .await;
        let confgate = Confgate::start(&cx, rendered.options).await;
        let kubectl = deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
        // Judged by name: a key the Secret lacks is denied.
        let other = web_deployment(
            &ns,
            "other",
            &["{name: NOPE, valueFrom: {secretKeyRef: {name: app-secret, key: NOPE}}}"],
        );
        let denied = kubectl.fails(&["apply", "-f", "-"], Some(&other)).await;
        assert!(
            denied.contains(&format!("secret \"{ns}/app-secret\" has no key \"NOPE\"")),
            "{mode}: {denied}"
        );
        if mode == "watch" {
            set_secret_key(&kubectl, &ns, "app-secret", "API_KEY", "rotated").await;
            reaches(
                &kubectl,
                &ns,
                2,
                Duration::from_secs(15),
                "the rotation's rollout",
            )
            .await;
        }
        let log = confgate.log_tail(4000);
        assert!(
            !log.contains("forbidden") && !log.contains("rollout failed"),
            "{mode}: something was refused:\n{log}"
        );
    }
}
