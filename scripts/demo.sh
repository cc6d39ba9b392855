#!/usr/bin/env bash
# Runs the demo against a local Valkey on 127.0.0.1:${VALKEY_PORT:-6379}, starting one
# (and installing valkey-server from Debian bookworm-backports if needed) when none is running.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${VALKEY_PORT:-6379}"
started=""
alive() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
if ! alive; then
  bash .ci/install-valkey
  dir="$(mktemp -d)"
  valkey-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/valkey.pid" --logfile "$dir/valkey.log"
  for _ in $(seq 100); do alive && break; sleep 0.05; done
  started="$dir"
  echo "started valkey-server on 127.0.0.1:$PORT"
fi
cleanup() {
  if [ -n "$started" ] && [ -f "$started/valkey.pid" ]; then
    kill "$(cat "$started/valkey.pid")" 2>/dev/null || true
    echo "stopped the valkey-server this script started"
  fi
}
trap cleanup EXIT
cargo run --quiet --release --example demo -- "redis://127.0.0.1:$PORT" "$@"

# The command-line tool: two programs take turns under one lock (each twice), each told its
# fencing token; then a holder whose keys are deleted is stopped (exit 75).
echo
echo "the valkeylock tool: two programs take turns under one lock"
cargo build --quiet --release --features cli --bin valkeylock
tool=target/release/valkeylock
export VALKEYLOCK_NODES="redis://127.0.0.1:$PORT"
lock="demo-cli-$$"
for p in A B; do
  for _ in 1 2; do
    "$tool" run "$lock" -- sh -c "echo \"  program $p starts, fencing token \$VALKEYLOCK_FENCING_TOKEN\"; sleep 0.2; echo \"  program $p ends\""
  done &
done
wait
"$tool" run "$lock" --grace 1s -- sleep 30 &
holder=$!
sleep 0.5
"$tool" status "$lock" | head -1
"$tool" release --force --yes "$lock"
code=0
wait "$holder" || code=$?
echo "the holder's valkeylock run exited $code (75: lock lost, program stopped)"
