#!/usr/bin/env bash
# Builds every image swarm-stack.yml runs, on an engine with no registry:
# nothing is pulled. Each image is FROM scratch, holding only files this
# machine has or installs (the release binaries, Debian packages, PyPI) and
# the shared libraries they load (read off `ldd`), and runs as the
# unprivileged user 65532, like the production Dockerfile's distroless
# images:
#   REGISTRY/gateway:TAG  the gateway, /etc/gateway/gateway.toml as in the Dockerfile
#   REGISTRY/app:TAG      the app (API, and `app worker`)
#   REGISTRY/redis:TAG    Debian's redis-server and redis-cli, with busybox
#                         for the stack's `sh -c` command and CMD-SHELL check
#   REGISTRY/mongo:TAG    the MongoDB service: SecantusDB (PyPI) on Debian's
#                         python3.11, the MongoDB-protocol server the tests
#                         use (no mongod can be had here: Debian ships none),
#                         with deploy/mongo-standin/mongosh answering the
#                         stack's healthcheck command with a real ping
# The gateway and app images keep the Dockerfile's user, environment,
# HEALTHCHECK and ENTRYPOINT; the production Dockerfile stays what
# operators with a registry build and push.
#
# Usage: deploy/local-images.sh [TAG]   (REGISTRY defaults to `edge`, TAG to
# `local`). Prints the image names. Set SKIP_BUILD=1 to use the release
# binaries already in target/release.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REGISTRY=${REGISTRY:-edge}
TAG=${1:-local}
SECANTUS_VERSION=0.7.0b3
WORK=$(mktemp -d /tmp/local-images.XXXXXX)
# A failed build leaves no root-filesystem image behind.
trap 'rm -rf "$WORK"; docker images -q --filter "reference=$REGISTRY/rootfs-*:$TAG" | xargs -r docker rmi -f >/dev/null 2>&1' EXIT
NONROOT=65532

log() { printf '[local-images] %s\n' "$*" >&2; }

apt_install() { # PACKAGE...: installs what is missing
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # Debian starts a system redis-server on install; the images carry their own.
  if [[ " ${missing[*]} " == *" redis-server "* ]]; then
    (systemctl stop redis-server || service redis-server stop) >/dev/null 2>&1 || true
  fi
}

# A root filesystem in $WORK/NAME with /etc/passwd, /etc/group and /tmp.
new_rootfs() { # NAME
  local fs="$WORK/$1"
  mkdir -p "$fs/etc" "$fs/tmp"
  chmod 1777 "$fs/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$NONROOT" "$NONROOT" >"$fs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%d:\n' "$NONROOT" >"$fs/etc/group"
  echo "$fs"
}

# Copies FILEs into ROOTFS at their own paths, with every shared library
# each one loads (ldd), the dynamic loader included.
add_elf() { # ROOTFS FILE...
  local fs=$1 file lib
  shift
  for file in "$@"; do
    mkdir -p "$fs$(dirname "$file")"
    cp -L "$file" "$fs$file"
    for lib in $(ldd "$file" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$fs$lib" ] && continue
      mkdir -p "$fs$(dirname "$lib")"
      cp -L "$lib" "$fs$lib"
    done
  done
}

# Builds ROOTFS into image NAME with the Dockerfile lines given on stdin.
# The root filesystem goes in by `docker import` of a tar (COPY would make
# every file root's, and the data directories must be the user's), then a
# build from that local image adds the lines (import takes no HEALTHCHECK).
build() { # ROOTFS NAME
  local fs=$1 name=$2 base
  base="$REGISTRY/rootfs-$(basename "$fs"):$TAG"
  tar -C "$fs" --numeric-owner -c . | docker import - "$base" >/dev/null
  { echo "FROM $base"; cat; } >"$WORK/Dockerfile.$(basename "$fs")"
  DOCKER_BUILDKIT=0 docker build -q -f "$WORK/Dockerfile.$(basename "$fs")" -t "$name" "$WORK" >/dev/null 2>&1
  docker rmi "$base" >/dev/null
  echo "$name"
}

# The runtime instructions of the production Dockerfile's STAGE (user,
# environment, ports, healthcheck, entrypoint), so these images start and
# probe themselves exactly as the production ones do.
runtime_of() { # STAGE
  awk -v stage="$1" '/^FROM /{inside = ($NF == stage)} inside && /^(USER|ENV|EXPOSE|HEALTHCHECK|ENTRYPOINT|CMD|WORKDIR) /' Dockerfile
}

binaries() {
  if [ -z "${SKIP_BUILD:-}" ]; then
    log "building the release binaries"
    GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} \
      cargo build --release --locked -p app -p gateway >&2
  fi
  [ -x target/release/app ] && [ -x target/release/gateway ] || {
    log "target/release/app and target/release/gateway are missing"
    exit 1
  }
}

gateway_image() {
  local fs
  fs=$(new_rootfs gateway)
  mkdir -p "$fs/usr/local/bin" "$fs/etc/gateway"
  add_elf "$fs" "$ROOT/target/release/gateway"
  mv "$fs$ROOT/target/release/gateway" "$fs/usr/local/bin/gateway"
  rm -rf "${fs:?}$ROOT"
  cp gateway.example.toml "$fs/etc/gateway/gateway.toml"
  runtime_of gateway | build "$fs" "$REGISTRY/gateway:$TAG"
}

app_image() {
  local fs
  fs=$(new_rootfs app)
  mkdir -p "$fs/usr/local/bin" "$fs/data"
  add_elf "$fs" "$ROOT/target/release/app"
  mv "$fs$ROOT/target/release/app" "$fs/usr/local/bin/app"
  rm -rf "${fs:?}$ROOT"
  chown "$NONROOT:$NONROOT" "$fs/data"
  runtime_of app | build "$fs" "$REGISTRY/app:$TAG"
}

redis_image() {
  apt_install redis-server redis-tools busybox-static
  local fs tool
  fs=$(new_rootfs redis)
  add_elf "$fs" /usr/bin/redis-server /usr/bin/redis-cli
  mkdir -p "$fs/bin" "$fs/data"
  cp /bin/busybox "$fs/bin/busybox"
  for tool in sh cat grep; do ln -s busybox "$fs/bin/$tool"; done
  chown "$NONROOT:$NONROOT" "$fs/data"
  build "$fs" "$REGISTRY/redis:$TAG" <<EOF
USER $NONROOT:$NONROOT
WORKDIR /data
EXPOSE 6379
ENTRYPOINT []
CMD ["redis-server", "--protected-mode", "no"]
EOF
}

mongo_image() {
  apt_install python3.11 python3-pip
  local fs cache="$ROOT/target/local-images/secantus-$SECANTUS_VERSION" so
  if [ ! -f "$cache/.complete" ]; then
    log "installing SecantusDB $SECANTUS_VERSION from PyPI"
    rm -rf "$cache"
    /usr/bin/python3.11 -m pip install -q --root-user-action=ignore --no-compile --target "$cache" "secantusdb==$SECANTUS_VERSION" >&2
    touch "$cache/.complete"
  fi
  fs=$(new_rootfs mongo)
  mkdir -p "$fs/usr/lib" "$fs/opt" "$fs/data/db"
  add_elf "$fs" /usr/bin/python3.11
  cp -a /usr/lib/python3.11 "$fs/usr/lib/python3.11"
  rm -rf "$fs/usr/lib/python3.11/test" "$fs/usr/lib/python3.11/dist-packages"
  cp -a "$cache" "$fs/opt/secantus"
  # The extension modules' own libraries (ssl, sqlite, WiredTiger's, ...).
  while IFS= read -r so; do
    add_elf "$fs" "$so"
  done < <(find /usr/lib/python3.11/lib-dynload "$cache" -name '*.so*' -type f)
  mkdir -p "$fs/usr/bin"
  install -m 0755 deploy/mongo-standin/mongosh "$fs/usr/bin/mongosh"
  chown -R "$NONROOT:$NONROOT" "$fs/data"
  build "$fs" "$REGISTRY/mongo:$TAG" <<EOF
USER $NONROOT:$NONROOT
ENV PYTHONPATH=/opt/secantus PYTHONDONTWRITEBYTECODE=1
WORKDIR /data/db
EXPOSE 27017
ENTRYPOINT ["/usr/bin/python3.11", "-m", "secantus", "--host", "0.0.0.0", "--port", "27017", "--storage-path", "/data/db", "--log-level", "WARNING"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 CMD ["mongosh", "--quiet", "--eval", "db.adminCommand('ping').ok"]
EOF
}

main() {
  command -v docker >/dev/null || { log "docker is not installed"; exit 1; }
  binaries
  gateway_image
  app_image
  redis_image
  mongo_image
}

main "$@"
