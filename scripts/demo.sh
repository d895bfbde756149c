#!/usr/bin/env bash
# Demo: start zfaas in a throw-away data directory, deploy the examples,
# invoke each one, show versions, an alias, logs and metrics, then stop.
set -euo pipefail
cd "$(dirname "$0")/.."
ZFAAS=./bin/zfaas
[ -x "$ZFAAS" ] || { echo "run 'make build examples' first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "the process sandbox needs root" >&2; exit 1; }

data=$(mktemp -d /tmp/zfaas-demo.XXXXXX)
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(freeport)
hport=$(freeport)
gw="https://127.0.0.1:$port"
health="http://127.0.0.1:$hport"
# The CLI uses the client config (the administrator's SVID files) that
# zfaas up writes here.
export ZFAAS_CLIENT_CONFIG=$data/client/config.yaml
log="$data/zfaas.log"
"$ZFAAS" up --data-dir "$data/state" --listen "127.0.0.1:$port" --grpc-listen off --health-listen "127.0.0.1:$hport" \
  --client-config "$ZFAAS_CLIENT_CONFIG" --deploy-examples build/examples >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

for _ in $(seq 100); do
  grep -q "deployed example python-hello\|example python-hello is up to date" "$log" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
step "$ZFAAS" fn ls
step "$ZFAAS" fn invoke hello --data '{"name":"demo"}' -v
step "$ZFAAS" fn invoke hello --data '{"name":"demo"}' -v
step "$ZFAAS" fn invoke python-hello --data '{"name":"demo"}'
step "$ZFAAS" fn invoke node-hello --data '{"name":"demo"}'
# curl over mutual TLS with the administrator's SVID; the gateway's SVID
# also names 127.0.0.1, so curl verifies it against the trust bundle.
c="$data/client"
step curl -s --cacert "$c/bundle.pem" --cert "$c/svid.pem" --key "$c/svid-key.pem" "$gw/function/http-echo/hello/world?x=1" -d 'from curl'
step "$ZFAAS" fn invoke caller --data '{"target":"hello","payload":{"name":"peer"}}'
step "$ZFAAS" fn deploy hello --dir build/examples/hello --env GREETING=Howdy
step "$ZFAAS" fn alias set hello live 1 --additional-version 2 --weight 0.5
for _ in 1 2 3 4; do "$ZFAAS" fn invoke hello:live --data '{"name":"canary"}'; done
step "$ZFAAS" fn versions hello
printf '\n\033[1m$ curl -s %s/metrics | grep zfaas_invocations_total\033[0m\n' "$health"
curl -s "$health/metrics" | grep '^zfaas_invocations_total' || true
echo
echo "demo done; platform log was $log (removed on exit)"
