#!/usr/bin/env bash
# The demo: a single-host Ferry in a temporary directory, one guest created,
# shown running and answering HTTP, restarted, then everything torn down.
set -euo pipefail
FERRY=${FERRY:-bin/ferry}
IMAGE_DIR=${IMAGE_DIR:-/var/cache/ferry/images}
work=$(mktemp -d /tmp/ferry-demo-XXXX)
run=$(mktemp -d /tmp/fdXXXX)
agent_pid=""
f() { "$FERRY" --data-dir "$work" "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
    f vm delete demo >/dev/null 2>&1
    kill "$agent_pid"; wait "$agent_pid" 2>/dev/null
  fi
  # Any guest of this demo still running (found by our socket directory).
  for c in $(grep -l -a "$run/" /proc/[0-9]*/cmdline 2>/dev/null || true); do
    p=${c#/proc/}; p=${p%/cmdline}; [ "$p" != "$$" ] && kill -9 "$p" 2>/dev/null
  done
  rm -rf "$work" "$run"
}
trap cleanup EXIT

say "Starting a single-host Ferry: ferry agent --dev (embedded etcd, TLS API, agent)"
t0=$(date +%s%N)
"$FERRY" agent --dev --data-dir "$work" --run-dir "$run" --image-dir "$IMAGE_DIR" \
  --listen 127.0.0.1:27443 --etcd-client-url http://127.0.0.1:22379 --etcd-peer-url http://127.0.0.1:22380 \
  >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 300); do f node list >/dev/null 2>&1 && break; sleep 0.1; done
f node list

say "Creating a guest: ferry vm create demo --memory 256M"
f vm create demo --memory 256M
t1=$(date +%s%N)
ms=$(( (t1 - t0) / 1000000 ))
printf 'from agent start to a guest answering HTTP: %d.%01d s\n' $((ms / 1000)) $(((ms % 1000) / 100))

say "The guest answers HTTP from the host"
ep=$(f vm show demo -o json | sed -n 's/.*"endpoint": "\([^"]*\)".*/\1/p')
curl -s "http://$ep/health"; echo
curl -s -X POST "http://$ep/disk/write?count=3" ; echo

say "ferry vm list"
f vm list

say "Restarting the guest (ACPI shutdown, fresh QEMU): new boot id, same disk"
f vm restart demo | grep -E 'state|guest'
curl -s "http://$ep/disk" 2>/dev/null || curl -s "http://$(f vm show demo -o json | sed -n 's/.*"endpoint": "\([^"]*\)".*/\1/p')/disk"; echo

say "Last lines of the serial console"
f vm console demo -n 3

say "Stopping and deleting"
f vm stop demo | grep state
f vm delete demo
f vm list
say "Done; tearing down"
