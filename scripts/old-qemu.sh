#!/usr/bin/env bash
# Unpacks a second, older QEMU build beside the installed one, for the
# mixed-version test (test/e2e/versions_test.go): Debian 12 main's QEMU 7.2,
# fetched with apt-get download and unpacked with dpkg -x into
# /var/cache/ferry/qemu-old — never installed, nothing on the system changes.
# Prints the binary's path. Idempotent. Elsewhere than Debian 12 it says so
# and exits 1 (the test then says where to get a second build).
set -euo pipefail
DEST=${OLD_QEMU_DIR:-/var/cache/ferry/qemu-old}
BIN=$DEST/root/usr/bin/qemu-system-x86_64
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then echo "$BIN"; exit 0; fi
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [ "$codename" != bookworm ]; then
  echo "old-qemu: only Debian 12 (bookworm) has an older QEMU in its main suite; this is '$codename'" >&2
  exit 1
fi
# The bookworm (main) versions of QEMU and its firmware (SeaBIOS, which QEMU
# finds beside its binary), whatever is installed.
ver() { apt-cache madison "$1" | awk -F'|' '$3 ~ /bookworm\/main/ && $3 !~ /backports|security/ {gsub(/ /,"",$2); print $2; exit}'; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pkgs=()
for p in qemu-system-x86 qemu-system-common qemu-system-data seabios; do
  v=$(ver "$p"); [ -n "$v" ] || { echo "old-qemu: no bookworm version of $p" >&2; exit 1; }
  pkgs+=("$p=$v")
done
(cd "$tmp" && apt-get download -q "${pkgs[@]}" >/dev/null 2>&1) || { echo "old-qemu: apt-get download ${pkgs[*]} failed" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/root"
for f in "$tmp"/*.deb; do dpkg -x "$f" "$DEST/root"; done
"$BIN" --version >/dev/null || { echo "old-qemu: $BIN does not run here" >&2; exit 1; }
echo "$BIN"
