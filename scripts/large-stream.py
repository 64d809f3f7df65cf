#!/usr/bin/env python3
"""Writes a rendered stream as a large platform repository renders it (`helm template` of many
releases, or `kustomize build` of a whole cluster): N apps in 20 namespaces, each a ConfigMap with
a sizeable config file, a Secret, a Deployment reading both, and a Service. Used by the
BENCHMARKS.md measurement of `confgate review` on a 20 MB stream.

    python3 scripts/large-stream.py 400 > /tmp/stream.yaml   # 1,600 objects, about 21 MB
"""
import sys

apps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
config = "".join(f"    setting_{i}: \"{'x' * 40}\"\n" for i in range(900))
out = sys.stdout
for n in range(apps):
    ns = f"team-{n % 20}"
    name = f"app-{n}"
    out.write(f"""---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config, namespace: {ns}, labels: {{app: {name}}}}}
data:
  LOG_LEVEL: info
  DATABASE_URL: postgres://db.{ns}:5432/{name}
  config.yaml: |
{config}---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-secret, namespace: {ns}}}
type: Opaque
stringData: {{API_KEY: key-{n}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: {name}
        image: registry.example/{name}:1.0.{n}
        envFrom: [{{configMapRef: {{name: {name}-config}}}}]
        env:
        - name: API_KEY
          valueFrom: {{secretKeyRef: {{name: {name}-secret, key: API_KEY}}}}
        resources:
          requests: {{cpu: 100m, memory: 128Mi}}
          limits: {{memory: 256Mi}}
        volumeMounts: [{{name: config, mountPath: /etc/app}}]
      volumes:
      - name: config
        configMap: {{name: {name}-config, items: [{{key: config.yaml, path: config.yaml}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
""")
