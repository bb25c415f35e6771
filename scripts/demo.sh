#!/usr/bin/env bash
# The demo: a 3-host Ferry cluster in network namespaces on this machine, a
# guest created and reached over the overlay, live-migrated away and back while
# a client streams to it through one TCP connection, a host drained, the
# guest's host crashed and the guest answering again from another host, and
# everything torn down.
set -euo pipefail
FERRY=${FERRY:-bin/ferry}
IMAGE_DIR=${IMAGE_DIR:-/var/cache/ferry/images}
TB=fdemo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
f() { ip netns exec "$TB-h1" "$FERRY" --data-dir "/tmp/$TB/h1" "$@"; }
field() { f vm show web -o json | sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" | head -1; }

cleanup() { [ -n "${DEMO_KEEP:-}" ] && return 0; "$FERRY" testbed down --name "$TB" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

say "A 3-host cluster in network namespaces: ferry testbed up --hosts 3"
"$FERRY" testbed up --hosts 3 --name "$TB" --image-dir "$IMAGE_DIR"
f node list

say "Create a highly available guest: ferry vm create web --ha"
t0=$(date +%s%N)
f vm create web --ha
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
printf 'created and answering in %d.%01d s\n' $((ms / 1000)) $(((ms % 1000) / 100))
ip=$(field ip); ip=${ip%/*}

say "A client on the overlay reaches it: curl http://$ip/health"
ip netns exec "$TB-cl" curl -s "http://$ip/health"; echo

say "Live migration away and back while the client streams through one TCP connection"
out=$(mktemp)
"$FERRY" testbed stream --name "$TB" --to "$ip" --for 12s >"$out" 2>&1 &
stream=$!
sleep 2
home=$(field node)
f vm migrate web --to auto
sleep 1
f vm migrate web --to "$home"
wait "$stream" || true
cat "$out"; rm -f "$out"

say "Drain the guest's host: ferry node drain $home"
f node drain "$home"
f vm list
f node undrain "$home"

say "High availability: crash the guest's host (every process in its namespace killed at once)"
if [ "$(field node)" = h1 ]; then f vm migrate web --to h2 >/dev/null; fi # h1 serves the API we use
victim=$(field node)
boot=$(ip netns exec "$TB-cl" curl -s -m 1 "http://$ip/health" | sed -n 's/.*"boot_id":"\([^"]*\)".*/\1/p')
t0=$(date +%s%N)
"$FERRY" testbed crash --name "$TB" "$victim"
while :; do
  now=$(ip netns exec "$TB-cl" curl -s -m 0.3 "http://$ip/health" | sed -n 's/.*"boot_id":"\([^"]*\)".*/\1/p' || true)
  if [ -n "$now" ] && [ "$now" != "$boot" ]; then break; fi
  if (( $(date +%s%N) - t0 > 60000000000 )); then echo "the guest did not come back within 60 s" >&2; exit 1; fi
  sleep 0.05
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
printf 'the guest answers again (new boot) from %s, %d.%01d s after %s died\n' "$(field node)" $((ms / 1000)) $(((ms % 1000) / 100)) "$victim"
f events -n 4

say "Done; tearing everything down (ferry testbed down)"
