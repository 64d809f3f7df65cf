#!/usr/bin/env bash
# Prints the path of a helm binary, for the chart tests and CI: $HELM when set, else the one
# shipped xz-compressed in $HELM_DIR (default ../shared/bin beside this repository), unpacked
# once into $HELM_CACHE (default ~/.cache/confgate-helm/VERSION), else helm on PATH.
set -euo pipefail
if [ -n "${HELM:-}" ]; then echo "$HELM"; exit 0; fi
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${HELM_DIR:-$here/../shared/bin}
archive=$(ls "$dir"/helm-v*.xz 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$archive" ]; then
  version=$(basename "$archive" .xz | sed 's/^helm-//')
  cache=${HELM_CACHE:-$HOME/.cache/confgate-helm}/$version
  if [ ! -x "$cache/helm" ]; then
    mkdir -p "$cache"
    xz -dc "$archive" > "$cache/helm.tmp" && chmod +x "$cache/helm.tmp" && mv "$cache/helm.tmp" "$cache/helm"
  fi
  echo "$cache/helm"
elif command -v helm >/dev/null; then
  command -v helm
else
  echo "helm.sh: no helm: set HELM, or put helm-vX.Y.Z.xz in $dir, or helm on PATH" >&2
  exit 1
fi
