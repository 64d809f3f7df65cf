#!/usr/bin/env bash
# Installs confgate with certificates made by confgate itself (no cert-manager needed).
# Idempotent: run it again to apply changes; the serving certificate is kept unless
# ROTATE_CERTS=true. Needs kubectl (pointed at the cluster) and the confgate binary
# (CONFGATE=/path/to/confgate, or `confgate` on PATH, or cargo to build it from this repository).
set -euo pipefail

NAMESPACE=${NAMESPACE:-confgate-system}
SERVICE=${SERVICE:-confgate}
ROTATE_CERTS=${ROTATE_CERTS:-false}
DEPLOY_DIR=$(cd "$(dirname "$0")" && pwd)

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

command -v kubectl >/dev/null || die "kubectl is not on PATH"
if [ -n "${CONFGATE:-}" ]; then
  confgate() { "$CONFGATE" "$@"; }
elif command -v confgate >/dev/null; then
  :
elif command -v cargo >/dev/null; then
  say "building confgate from $DEPLOY_DIR/.."
  cargo build --quiet --release --manifest-path "$DEPLOY_DIR/../Cargo.toml"
  CONFGATE="$DEPLOY_DIR/../target/release/confgate"
  confgate() { "$CONFGATE" "$@"; }
else
  die "no confgate binary: set CONFGATE=/path/to/confgate"
fi

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

say "kubectl apply -k $DEPLOY_DIR/overlays/self-signed (namespace, RBAC, policies, Deployment, Service, PDB, HPA)"
kubectl apply -k "$DEPLOY_DIR/overlays/self-signed"

if kubectl -n "$NAMESPACE" get secret confgate-tls >/dev/null 2>&1 && [ "$ROTATE_CERTS" != true ]; then
  say "secret $NAMESPACE/confgate-tls exists: keeping it (ROTATE_CERTS=true replaces it)"
  kubectl -n "$NAMESPACE" get secret confgate-tls -o jsonpath='{.data.ca\.crt}' | base64 -d > "$workdir/ca.crt"
  [ -s "$workdir/ca.crt" ] || die "secret $NAMESPACE/confgate-tls has no ca.crt; rerun with ROTATE_CERTS=true"
else
  say "confgate certs: a new CA and serving certificate for $SERVICE.$NAMESPACE.svc"
  confgate certs --out-dir "$workdir" --service "$SERVICE" --namespace "$NAMESPACE" >/dev/null
  say "kubectl apply secret $NAMESPACE/confgate-tls (tls.crt, tls.key, ca.crt)"
  kubectl -n "$NAMESPACE" create secret generic confgate-tls --type kubernetes.io/tls \
    --from-file=tls.crt="$workdir/tls.crt" --from-file=tls.key="$workdir/tls.key" \
    --from-file=ca.crt="$workdir/ca.crt" --dry-run=client -o yaml | kubectl apply -f -
fi

say "waiting for deployment/confgate to be ready"
kubectl -n "$NAMESPACE" rollout status deployment/confgate --timeout=180s

say "registering the webhooks generated from $DEPLOY_DIR/base/policies"
confgate webhooks --policies "$DEPLOY_DIR/base/policies" --ca-bundle "$workdir/ca.crt" \
  --service "$SERVICE" --namespace "$NAMESPACE" | kubectl apply -f -

say "done: kubectl get validatingwebhookconfiguration,mutatingwebhookconfiguration confgate"
