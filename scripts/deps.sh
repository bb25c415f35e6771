#!/usr/bin/env bash
# Installs what Ferry needs on a Debian 12 host, idempotently: QEMU, busybox,
# iproute2, qemu-utils, curl, and a Go toolchain new enough for go.mod.
# Run as root. Safe to run again: it only installs what is missing.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || need_pkgs+=(qemu-system-x86)
have qemu-img           || need_pkgs+=(qemu-utils)
[ -x /bin/busybox ] && file_is_static=$( (ldd /bin/busybox 2>&1 || true) | grep -c "not a dynamic" || true) || file_is_static=0
[ "${file_is_static}" = "1" ] || need_pkgs+=(busybox-static)
have ip                 || need_pkgs+=(iproute2)
have curl               || need_pkgs+=(curl)
have apt-get            || { echo "deps: this script needs apt-get (Debian 12)" >&2; exit 1; }

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need_pkgs[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "deps: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Go: the version go.mod asks for. Debian 12 ships 1.19, too old; the
# toolchain itself is published as a module (golang.org/toolchain) on the Go
# module proxy, so fetch it from there with whatever go is at hand.
want=$(awk '/^go /{print $2; exit}' "$(dirname "$0")/../go.mod")
go_ok() {
  local g=$1 v
  [ -x "$g" ] || return 1
  v=$("$g" env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
  [ "$(printf '%s\n%s\n' "$want" "$v" | sort -V | head -1)" = "$want" ]
}
for g in "$(command -v go || true)" /usr/local/go/bin/go; do
  if [ -n "$g" ] && go_ok "$g"; then exit 0; fi
done
echo "deps: installing Go $want into /usr/local/go"
boot=$(command -v go || true)
if [ -z "$boot" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go ca-certificates >/dev/null
  boot=/usr/bin/go
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dir=$(cd "$tmp" && GOPATH="$tmp/gopath" GOFLAGS=-modcacherw GOTOOLCHAIN=local "$boot" mod download -json "golang.org/toolchain@v0.0.1-go${want}.linux-amd64" | awk -F'"' '/"Dir"/{print $4}')
[ -x "$dir/bin/go" ] || { echo "deps: could not fetch Go $want from the module proxy" >&2; exit 1; }
rm -rf /usr/local/go
cp -a "$dir" /usr/local/go
chmod -R u+w /usr/local/go
/usr/local/go/bin/go version
