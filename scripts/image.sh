#!/usr/bin/env bash
# Builds confgate's OCI image without Docker: Debian's buildah, as root, with vfs storage and
# chroot isolation (no daemon, no base image to pull, no network once cargo has its crates).
#
#   scripts/image.sh [IMAGE]        # default localhost/confgate:dev; prints the image's size
#
# The image has the Dockerfile's layout: the release binary at /usr/local/bin/confgate, the
# shipped policies at /etc/confgate/policies, and the ENV, USER, EXPOSE, ENTRYPOINT and CMD of
# the Dockerfile's last stage, read from the Dockerfile itself (so the two cannot drift). In place
# of the distroless base it holds what the binary needs of one: the shared libraries `ldd`
# names, the system's CA certificates, /etc/passwd and /etc/group with the non-root user 65532,
# and /tmp.
#
# Push it (docs/install.md):
#   STORAGE_DRIVER=vfs buildah push IMAGE docker://registry.example.com/platform/confgate:TAG
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-localhost/confgate:dev}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
command -v buildah >/dev/null || {
  echo "image: buildah is not installed (Debian: apt-get install -y buildah)" >&2
  exit 1
}

cargo build --release --locked --bin confgate
bin=target/release/confgate
strip -o target/release/confgate.stripped "$bin"

ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")
install -D -m 0755 target/release/confgate.stripped "$root/usr/local/bin/confgate"
# The loader and libraries, at the paths the binary asks for them.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root/etc/confgate"
cp -r policies "$root/etc/confgate/policies"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
install -d -m 1777 "$root/tmp"
install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
buildah umount "$ctr" >/dev/null

# The configuration of the Dockerfile's last stage.
config=()
while IFS= read -r line; do
  directive=${line%% *}
  value=${line#* }
  case "$directive" in
    ENV) config+=(--env "$value") ;;
    USER) config+=(--user "$value") ;;
    EXPOSE) config+=(--port "$value") ;;
    ENTRYPOINT) config+=(--entrypoint "$value") ;;
    CMD) config+=(--cmd "$value") ;;
  esac
done < <(awk '/^FROM /{n=0} {stage[n++]=$0} END{for (i=0;i<n;i++) print stage[i]}' Dockerfile)
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
buildah config "${config[@]}" \
  --label org.opencontainers.image.title=confgate \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctr"
buildah commit --quiet "$ctr" "$image" >/dev/null
echo "image: $image, $(buildah images --format '{{.Size}}' "$image")"
