#!/usr/bin/env bash
# Three `regionkv node` processes on this machine, and `regionkv client` talking to
# them: writes, a split, a merge, the region table; one node killed with SIGKILL and
# restarted; another whose data dir is lost, replaced; then a clean stop.
# Usage: examples/three_processes.sh [path/to/regionkv]
set -euo pipefail

BIN=${1:-target/release/regionkv}
[ -x "$BIN" ] || cargo build --release --bin regionkv
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

echo "a shared cluster secret, at least 16 bytes" > "$DIR/secret"
PORTS=(17101 17102 17103)
peers() {
  local me=$1 out=()
  for i in 1 2 3; do
    [ "$i" = "$me" ] || out+=(--peer "$i=127.0.0.1:${PORTS[$((i - 1))]}")
  done
  echo "${out[@]}"
}
# start ID [--bootstrap|--join]: the flag matters only while the data dir is empty.
start() {
  local id=$1 flag=${2:-}
  # shellcheck disable=SC2046,SC2086
  "$BIN" node --id "$id" --data-dir "$DIR/data-$id" --listen "127.0.0.1:${PORTS[$((id - 1))]}" \
    --cluster-id 1 --secret-file "$DIR/secret" $(peers "$id") $flag \
    >>"$DIR/node-$id.out" 2>>"$DIR/node-$id.log" &
  PIDS[$((id - 1))]=$!
  for _ in $(seq 1 100); do grep -q listening "$DIR/node-$id.out" 2>/dev/null && return; sleep 0.05; done
  echo "node $id did not start; see $DIR/node-$id.log" >&2
  exit 1
}
client() { "$BIN" client --addr 127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103 \
  --cluster-id 1 --secret-file "$DIR/secret" "$@"; }

for id in 1 2 3; do start "$id" --bootstrap; done
for i in $(seq 1 20); do client put "key-$i" "value-$i"; done
client get key-7
client split key-10
client regions
kill -KILL "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
echo "node 2 killed (SIGKILL)"
for i in $(seq 21 30); do client put "key-$i" "value-$i"; done
start 2
echo "node 2 restarted"
client scan --start key- --limit 5
client merge 1 "$(client --json regions | grep -o '"id": [0-9]*' | sed -n 2p | grep -o '[0-9]*')"
client regions
kill -KILL "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null || true
rm -rf "$DIR/data-3"
echo "node 3 killed and its data dir lost"
if "$BIN" node --id 3 --data-dir "$DIR/data-3" --listen 127.0.0.1:17103 --cluster-id 1 \
  --secret-file "$DIR/secret" --stop-on-stdin-eof </dev/null 2>>"$DIR/node-3.log"; then
  echo "a node with an empty data dir started without --bootstrap or --join" >&2
  exit 1
fi
echo "node 3 refuses to start on an empty data dir without --join"
start 3 --join
client store remove 3
client store add 3 127.0.0.1:17103
client get key-7
client status
for pid in "${PIDS[@]}"; do kill -TERM "$pid"; done
wait
PIDS=()
echo "all nodes stopped cleanly"
