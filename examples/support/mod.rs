//! What the examples share: reading a process's memory from /proc, and realistic workloads.

use serde_json::{Value, json};

/// A `/proc/<process>/status` field in KiB (`VmRSS:`, `VmHWM:`), 0 when it cannot be read;
/// `process` is a PID or `self`.
pub fn status_kib(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// This process's resident memory, in KiB.
#[allow(dead_code)] // not every example uses both
pub fn rss_kib() -> u64 {
    status_kib("self", "VmRSS:")
}

/// Deployment `service-{i}` in namespace `team-{i % 200}`, shaped like a real one: 3 containers
/// with images, args, probes and resources, 12 environment variables of which 4 read keys of
/// ConfigMap `app-{i}` and 2 of Secret `app-{i}-secret`, an envFrom of `app-{i}-env`, 3 volumes.
#[allow(dead_code)] // not every example uses it
pub fn deployment(i: usize) -> Value {
    let container = |c: usize| {
        let env: Vec<Value> = (0..12)
            .map(|e| match e % 3 {
                0 => json!({"name": format!("CFG_{e}"), "valueFrom": {"configMapKeyRef": {"name": format!("app-{i}"), "key": format!("key-{e}")}}}),
                1 if e < 6 => json!({"name": format!("SECRET_{e}"), "valueFrom": {"secretKeyRef": {"name": format!("app-{i}-secret"), "key": format!("key-{e}")}}}),
                _ => json!({"name": format!("PLAIN_{e}"), "value": format!("value-{i}-{e}-with-some-length")}),
            })
            .collect();
        json!({
            "name": format!("c{c}"), "image": format!("registry.example.com/team-{}/service-{i}:1.{c}.0", i % 200),
            "args": ["--port=8080", "--log-format=json", "--config=/etc/app/app.yaml"],
            "env": env,
            "envFrom": [{"configMapRef": {"name": format!("app-{i}-env")}}],
            "ports": [{"containerPort": 8080, "name": "http"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "tmp", "mountPath": "/tmp"}]
        })
    };
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("service-{i}"), "namespace": format!("team-{}", i % 200),
                     "uid": format!("00000000-0000-0000-0000-{i:012}"), "generation": 3,
                     "labels": {"app": format!("service-{i}"), "team": format!("team-{}", i % 200)}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": format!("service-{i}")}},
                 "template": {"metadata": {"labels": {"app": format!("service-{i}")},
                                           "annotations": {"checksum/config": "6417addb97276f2dc1b91d472434df09a4418d1d501f293a3a30270f7421497c"}},
                              "spec": {"containers": [container(0), container(1), container(2)],
                                       "volumes": [{"name": "config", "configMap": {"name": format!("app-{i}"), "items": [{"key": "app.yaml", "path": "app.yaml"}]}},
                                                   {"name": "creds", "secret": {"secretName": format!("app-{i}-secret")}},
                                                   {"name": "tmp", "emptyDir": {}}]}}},
        "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}
    })
}
