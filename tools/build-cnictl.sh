#!/bin/sh
# Build tools/cnictl (a libcni-based CNI client) offline with Debian's Go and
# Debian's libcni (golang-github-appc-cni-dev), in GOPATH mode: no module proxy.
#
#   tools/build-cnictl.sh [OUTPUT]      default OUTPUT: <repo>/.build/cnictl/cnictl
#
# Rebuilds only when the binary is missing or older than tools/cnictl/main.go
# (or this script).  Prints the absolute path of the binary on stdout; build
# output goes to stderr.  Needs: golang-go, golang-github-appc-cni-dev.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
src="$here/cnictl"
out=${1:-"$repo/.build/cnictl/cnictl"}
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac

gopath_libcni=${CNICTL_GOCODE:-/usr/share/gocode}

if [ -x "$out" ] && [ ! "$src/main.go" -nt "$out" ] && [ ! "$0" -nt "$out" ]; then
    echo "$out"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build-cnictl: 'go' not found (apt-get install -y golang-go golang-github-appc-cni-dev)" >&2
    exit 2
fi
if [ ! -d "$gopath_libcni/src/github.com/containernetworking/cni/libcni" ]; then
    echo "build-cnictl: libcni not found under $gopath_libcni (apt-get install -y golang-github-appc-cni-dev)" >&2
    exit 2
fi

builddir="$repo/.build/cnictl"
mkdir -p "$builddir/gocache" "$builddir/gopath" "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT INT TERM
(
    cd "$src"
    GO111MODULE=off \
    GOFLAGS= \
    GOPATH="$builddir/gopath:$gopath_libcni" \
    GOCACHE="$builddir/gocache" \
    CGO_ENABLED=0 \
    go build -trimpath -o "$tmp" . >&2
)
mv -f "$tmp" "$out"
echo "$out"
