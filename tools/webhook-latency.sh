#!/usr/bin/env bash
# Measures how long a webhook delivery takes to be answered (recorded in the
# log and fsynced, then 202) and to be processed (its outcome recorded), with
# the release daemon and a generic receiver, one delivery at a time.
#
#   tools/webhook-latency.sh [DELIVERIES]     (default: 200)
#
# Needs curl and openssl (on the machine image) and a release build
# (cargo build --release). Prints p50, p99 and max of curl's time to the
# answer, and the time until the last delivery's outcome was listed.
set -euo pipefail
cd "$(dirname "$0")/.."
deliveries=${1:-200}
bin=target/release/cairn
[ -x "$bin" ] || cargo build --release --quiet

work=$(mktemp -d)
secret=latency-secret-0123456789
cat >"$work/cairn.toml" <<TOML
[reconcile]
enabled = false
[hooks.bench]
type = "generic"
secret = "$secret"
TOML
"$bin" serve --config "$work/cairn.toml" --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
daemon=$!
stop() { kill -TERM "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; rm -rf "$work"; }
trap stop EXIT
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
server=$(sed -n 's/^cairn listening on //p' "$work/out")
export CAIRN_SERVER=$server
"$bin" apply -f docs/examples/prod-eu.yaml >/dev/null

started=$(date +%s.%N)
for i in $(seq "$deliveries"); do
  body="{\"id\": \"latency-$i\", \"action\": \"scale\", \"cluster\": \"prod-eu\", \"pool\": \"workers\", \"replicas\": $((2 + i % 5))}"
  t=$(date +%s)
  signature=$(printf '%s' "$t.$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "$server/v1/hooks/bench" \
    -H 'content-type: application/json' -H "x-cairn-signature: t=$t,v1=$signature" \
    --data-binary "$body" >>"$work/times"
done
until "$bin" hooks deliveries bench --limit 1 | grep -q "latency-$deliveries.*done"; do sleep 0.05; done
finished=$(date +%s.%N)

codes=$(cut -d' ' -f1 "$work/times" | sort | uniq -c | tr '\n' ' ')
sort -n -k2 "$work/times" | awk -v codes="$codes" -v total="$(echo "$finished - $started" | bc)" '
  { t[NR] = $2 * 1000 }
  END {
    printf "deliveries: %d (status counts: %s)\n", NR, codes
    printf "answer (recorded + fsynced, 202): p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", t[int(NR * 0.5)], t[int(NR * 0.99)], t[NR]
    printf "all %d sent one at a time and processed in %.2f s\n", NR, total
  }'
