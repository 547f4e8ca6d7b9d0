#!/usr/bin/env bash
# Builds a real kube-apiserver and kube-controller-manager (Kubernetes 1.20.2) from Debian
# bookworm's source package, with etcd from Debian, for the real-API-server test tier.
# The first run takes about 10 minutes on 2 cores (10m07s on 2026-12-02, the test suite running
# beside it); later runs find the binaries in the cache and
# return at once. Needs root (apt-get), as on the developers' and CI's machines.
#   KUBE_BIN_DIR (default ~/.cache/tuneloop/kubernetes-1.20.2/bin): where the binaries go.
set -euo pipefail

KUBE_VERSION=1.20.2
BIN_DIR=${KUBE_BIN_DIR:-$HOME/.cache/tuneloop/kubernetes-$KUBE_VERSION/bin}
BINARIES=(kube-apiserver kube-controller-manager)

have_binaries() {
  for binary in "${BINARIES[@]}"; do [ -x "$BIN_DIR/$binary" ] || return 1; done
  command -v etcd > /dev/null
}

if have_binaries; then
  echo "build_kube: Kubernetes $KUBE_VERSION binaries cached in $BIN_DIR"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "build_kube: apt-get needs root; without the binaries the real-API-server tests are skipped" >&2
  [ -z "${CI:-}" ] || exit 1
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # the same suites as the binary packages, for `apt-get source`
  cat > /etc/apt/sources.list.d/tuneloop-deb-src.sources <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go rsync jq etcd-server dpkg-dev \
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev > /dev/null

WORK=$(mktemp -d /tmp/tuneloop-kube-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get source -qq kubernetes > /dev/null  # 1.20.5+really1.20.2 in bookworm
SRC=$(find "$WORK" -maxdepth 1 -type d -name "kubernetes-*" | head -1)
[ -n "$SRC" ] || { echo "build_kube: apt-get source kubernetes gave no source tree" >&2; exit 1; }
cd "$SRC"

# Released with Go 1.15; Debian's Go 1.19 needs three changes (DESIGN.md):
# 1. the vendored reflect2 1.0.1 crashes the server (SIGSEGV in mapiterinit) at the first watch;
# 2. json-iterator to the version that goes with reflect2 1.0.2;
rm -rf vendor/github.com/modern-go/reflect2 vendor/github.com/json-iterator/go
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/json-iterator/go vendor/github.com/json-iterator/go
# 3. built with Go >= 1.16 every empty string in a custom resource is refused as "null"
#    (kubernetes issue 99804).
for file in vendor/github.com/go-openapi/validate/type.go vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go; do
  [ -f "$file" ] || continue
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$file"
  grep -q 'if data == nil {' "$file" || { echo "build_kube: patch 3 did not apply to $file" >&2; exit 1; }
done

# GOPATH mode, as debian/rules builds it
mkdir -p .go/src/k8s.io
ln -sfn "$SRC" .go/src/k8s.io/kubernetes
export GOPATH="$SRC/.go" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOCACHE="$WORK/go-cache"
cd .go/src/k8s.io/kubernetes
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" KUBE_BUILD_PLATFORMS=linux/amd64 > "$WORK/make.log" 2>&1 \
  || { tail -40 "$WORK/make.log" >&2; echo "build_kube: make failed" >&2; exit 1; }

mkdir -p "$BIN_DIR"
for binary in "${BINARIES[@]}"; do
  built=$(find _output -type f -name "$binary" | head -1)
  [ -n "$built" ] || { echo "build_kube: $binary was not built" >&2; exit 1; }
  install -m 0755 "$built" "$BIN_DIR/$binary.partial"
  mv "$BIN_DIR/$binary.partial" "$BIN_DIR/$binary"
done
"$BIN_DIR/kube-apiserver" --version
echo "build_kube: built into $BIN_DIR"
