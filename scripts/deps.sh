#!/usr/bin/env bash
# Installs what Ferry needs on a Debian 12 or 13 host, idempotently: QEMU
# (9.0 or newer), busybox, iproute2, qemu-utils, curl, nftables, and a Go
# toolchain new enough for go.mod. Run as root. Safe to run again: it only
# installs what is missing or too old.
#
# QEMU: Debian 12's main suite ships 7.2, whose TCG dirty tracking loses pages
# written during a live migration (fixed upstream in 9.0, see
# docs/KNOWN-ISSUES.md). On Debian 12 the official bookworm-backports suite
# ships QEMU 10; this script adds that suite (same archive and keyring as the
# machine's main source) and installs only QEMU and what it depends on from
# it — apt pins backports low by default, so nothing else is upgraded. Debian 13 has QEMU 10
# in main.
set -euo pipefail

QEMU_MIN=9.0
have() { command -v "$1" >/dev/null 2>&1; }
have apt-get || { echo "deps: this script needs apt-get (Debian 12 or 13)" >&2; exit 1; }
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

qemu_version() {
  qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9][0-9.]*\).*/\1/p' | head -1
}

codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")

need_pkgs=()
qemu_pkgs=()
qv=$(qemu_version || true)
if [ -z "$qv" ] || ! ver_ge "$qv" "$QEMU_MIN"; then
  qemu_pkgs+=(qemu-system-x86 qemu-utils)
elif ! have qemu-img; then
  qemu_pkgs+=(qemu-utils)
fi
[ -x /bin/busybox ] && file_is_static=$( (ldd /bin/busybox 2>&1 || true) | grep -c "not a dynamic" || true) || file_is_static=0
[ "${file_is_static}" = "1" ] || need_pkgs+=(busybox-static)
have ip   || need_pkgs+=(iproute2)
have curl || need_pkgs+=(curl)
have nft  || need_pkgs+=(nftables) # the tests cut links between testbed hosts with it
# What only the test suite needs (make test sets FERRY_TEST_DEPS=1): a real
# Prometheus server that scrapes the testbed, a headless browser for the
# dashboard's test, and keepalived, which shares a VRRP group with Ferry in
# the virtual address's test.
new_prometheus=0
new_keepalived=0
if [ "${FERRY_TEST_DEPS:-}" = 1 ]; then
  if ! have prometheus; then
    need_pkgs+=(prometheus)
    new_prometheus=1
  fi
  have chromium || need_pkgs+=(chromium)
  if ! have keepalived; then
    need_pkgs+=(keepalived)
    new_keepalived=1
  fi
fi

as_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing $*; run as root to install them" >&2
    exit 1
  fi
}
export DEBIAN_FRONTEND=noninteractive

# add_backports writes a deb822 source for bookworm-backports beside the
# machine's own, using the same archive address and keyring as the source
# that carries "bookworm". Prints nothing when the suite is already known.
add_backports() {
  if apt-cache policy 2>/dev/null | grep -q "bookworm-backports/main"; then return 0; fi
  local f=/etc/apt/sources.list.d/ferry-bookworm-backports.sources uri="" key=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    # The first stanza whose Suites include bookworm (not -security).
    read -r uri key < <(awk '
      BEGIN{RS=""; FS="\n"}
      {u=""; s=""; k=""
       for (i=1;i<=NF;i++) {
         if ($i ~ /^URIs:/) {sub(/^URIs:[ \t]*/,"",$i); split($i,a," "); u=a[1]}
         if ($i ~ /^Suites:/) s=$i
         if ($i ~ /^Signed-By:/) {sub(/^Signed-By:[ \t]*/,"",$i); k=$i}
       }
       if (s ~ /[ \t]bookworm([ \t]|$)/ && u != "") {print u, k; exit}}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 ~ / bookworm / {for(i=2;i<=NF;i++) if ($i ~ /^(https?|ftp|file):/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  [ -n "$key" ] || key=/usr/share/keyrings/debian-archive-keyring.gpg
  echo "deps: adding bookworm-backports ($uri) for QEMU >= $QEMU_MIN"
  cat >"$f" <<SRC
# Added by Ferry's scripts/deps.sh: QEMU >= $QEMU_MIN for Debian 12.
# Backports are pinned low by apt (NotAutomatic): only what is installed
# with -t bookworm-backports comes from here.
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: $key
SRC
  apt-get update -qq
}

if [ ${#qemu_pkgs[@]} -gt 0 ]; then
  as_root "${qemu_pkgs[@]}"
  case "$codename" in
    bookworm)
      add_backports
      # -t raises backports for this one transaction only: QEMU and the
      # packages it depends on come from there, every other package stays.
      echo "deps: installing ${qemu_pkgs[*]} from bookworm-backports${qv:+ (found QEMU $qv, need >= $QEMU_MIN)}"
      apt-get install -y -qq --no-install-recommends -t bookworm-backports "${qemu_pkgs[@]}" >/dev/null
      ;;
    *)
      echo "deps: installing ${qemu_pkgs[*]}"
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${qemu_pkgs[@]}" >/dev/null
      ;;
  esac
  qv=$(qemu_version || true)
  if [ -z "$qv" ] || ! ver_ge "$qv" "$QEMU_MIN"; then
    echo "deps: QEMU ${qv:-missing} after install; Ferry needs >= $QEMU_MIN (Debian 12: bookworm-backports, Debian 13: main)" >&2
    exit 1
  fi
  echo "deps: QEMU $qv"
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
  as_root "${need_pkgs[@]}"
  echo "deps: installing ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  # The tests run their own Prometheus; the package's service, started by
  # its installation where systemd runs, is not wanted on this machine.
  if [ "$new_prometheus" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  # Likewise keepalived's: the test runs its own in a testbed namespace.
  if [ "$new_keepalived" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now keepalived >/dev/null 2>&1 || true
  fi
fi

# Go: the version go.mod asks for. Debian 12 ships 1.19, too old; the
# toolchain itself is published as a module (golang.org/toolchain) on the Go
# module proxy, so fetch it from there with whatever go is at hand.
want=$(awk '/^go /{print $2; exit}' "$(dirname "$0")/../go.mod")
go_ok() {
  local g=$1 v
  [ -x "$g" ] || return 1
  v=$("$g" env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
  ver_ge "$v" "$want"
}
for g in "$(command -v go || true)" /usr/local/go/bin/go; do
  if [ -n "$g" ] && go_ok "$g"; then exit 0; fi
done
echo "deps: installing Go $want into /usr/local/go"
boot=$(command -v go || true)
if [ -z "$boot" ]; then
  apt-get install -y -qq --no-install-recommends golang-go ca-certificates >/dev/null
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
