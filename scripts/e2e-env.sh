#!/usr/bin/env bash
# Prints the environment for the end-to-end suite (tests/e2e/), for `eval`:
#   eval "$(scripts/e2e-env.sh)"                 # the newest control plane in ../shared/kube
#   eval "$(VERSION=v1.26.0 scripts/e2e-env.sh)"
#   cargo test --locked --test e2e
# The xz-compressed kube-apiserver and kube-controller-manager in $KUBE_DIR (default
# ../shared/kube beside this repository) are unpacked once into $KUBE_BIN_CACHE (default
# ~/.cache/confgate-kube/VERSION); etcd is taken from PATH (Debian: apt-get install etcd-server).
# Any other binaries work too: set ETCD, KUBE_APISERVER and KUBE_CONTROLLER_MANAGER yourself.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kube_dir=${KUBE_DIR:-$here/../shared/kube}
[ -d "$kube_dir" ] || { echo "e2e-env: no $kube_dir (set KUBE_DIR)" >&2; exit 1; }
version=${VERSION:-$(ls "$kube_dir"/kube-apiserver-*.xz | sed 's/.*kube-apiserver-//; s/\.xz$//' | sort -V | tail -1)}
cache=${KUBE_BIN_CACHE:-$HOME/.cache/confgate-kube}/$version
mkdir -p "$cache"
for name in kube-apiserver kube-controller-manager; do
  if [ ! -x "$cache/$name" ]; then
    src="$kube_dir/$name-$version.xz"
    [ -f "$src" ] || { echo "e2e-env: no $src" >&2; exit 1; }
    xz -dc "$src" > "$cache/$name.tmp" && chmod +x "$cache/$name.tmp" && mv "$cache/$name.tmp" "$cache/$name"
  fi
done
etcd=${ETCD:-$(command -v etcd || true)}
[ -n "$etcd" ] || { echo "e2e-env: no etcd on PATH (apt-get install -y etcd-server, or set ETCD)" >&2; exit 1; }
# helm, for the chart's install/upgrade/uninstall test (scripts/helm.sh says where it is found).
helm=$("$here/scripts/helm.sh")
printf 'export ETCD=%q KUBE_APISERVER=%q KUBE_CONTROLLER_MANAGER=%q HELM=%q\n' "$etcd" "$cache/kube-apiserver" "$cache/kube-controller-manager" "$helm"
