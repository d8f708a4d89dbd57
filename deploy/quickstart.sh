#!/usr/bin/env bash
# Quickstart for a fresh Debian machine (as root, Rust toolchain present):
# installs the missing system packages, builds converge, starts an entity server in the
# background on a private unix socket, applies the demo sandbox and lists the entities.
#
#   bash deploy/quickstart.sh
#
# Settings (environment):
#   CONVERGE_QUICKSTART_DIR  state directory (default: a new /tmp/converge-quickstart.XXXXXX)
#   CONVERGE_BUILD_PROFILE   cargo profile to build (default: release)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${CONVERGE_BUILD_PROFILE:-release}"
log() { printf '==> %s\n' "$*" >&2; }

bash "$REPO_ROOT/deploy/test.sh" --deps-only

if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
cd "$REPO_ROOT"
log "building converge ($PROFILE)"
cargo build --profile "$PROFILE" --bin converge
case "$PROFILE" in
    dev) BIN="$REPO_ROOT/target/debug/converge" ;;
    *) BIN="$REPO_ROOT/target/$PROFILE/converge" ;;
esac

STATE_DIR="${CONVERGE_QUICKSTART_DIR:-$(mktemp -d /tmp/converge-quickstart.XXXXXX)}"
mkdir -p "$STATE_DIR"
SOCKET="$STATE_DIR/entity.sock"
export CONVERGE_SERVER="unix:$SOCKET"

if [ -f "$STATE_DIR/server.pid" ] && kill -0 "$(cat "$STATE_DIR/server.pid")" 2>/dev/null; then
    log "entity server already running (pid $(cat "$STATE_DIR/server.pid"))"
else
    log "starting the entity server on $CONVERGE_SERVER (log: $STATE_DIR/server.log)"
    setsid nohup "$BIN" server --store "redb:$STATE_DIR/entities.redb" --listen "$CONVERGE_SERVER" \
        </dev/null >"$STATE_DIR/server.log" 2>&1 &
    echo "$!" >"$STATE_DIR/server.pid"
    for _ in $(seq 1 300); do
        [ -S "$SOCKET" ] && break
        if ! kill -0 "$(cat "$STATE_DIR/server.pid")" 2>/dev/null; then
            log "the entity server exited; its log:"
            cat "$STATE_DIR/server.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [ ! -S "$SOCKET" ]; then
        log "the entity server did not start listening within 30 s; see $STATE_DIR/server.log"
        exit 1
    fi
fi

log "converge apply -f deploy/examples/demo-sandbox.yaml"
"$BIN" apply -f "$REPO_ROOT/deploy/examples/demo-sandbox.yaml"
log "converge get"
"$BIN" get

cat <<MSG

converge is running. To use it from this shell:
  export CONVERGE_SERVER=$CONVERGE_SERVER
  $BIN get sandbox/demo -o yaml
  $BIN watch
To stop the server:
  kill $(cat "$STATE_DIR/server.pid")
MSG
