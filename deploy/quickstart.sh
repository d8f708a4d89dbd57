#!/usr/bin/env bash
# Quickstart for a fresh Debian machine (as root, Rust toolchain present): installs the
# missing system packages, builds converge, starts a containerd for it when none answers,
# runs `converge up` (entity server + registry + controller) in the background, imports a
# busybox demo image and applies a demo sandbox, then shows it running.
#
#   bash deploy/quickstart.sh
#
# Settings (environment):
#   CONVERGE_DATA_DIR        converge's data dir (default: /var/lib/converge)
#   CONTAINERD_SOCKET        a running containerd to use (default: /run/containerd/containerd.sock
#                            when it answers, else a converge-owned one is started)
#   CONVERGE_BUILD_PROFILE   cargo profile to build (default: release)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${CONVERGE_BUILD_PROFILE:-release}"
DATA_DIR="${CONVERGE_DATA_DIR:-/var/lib/converge}"
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
mkdir -p "$DATA_DIR"
chmod 0700 "$DATA_DIR"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { # PIDFILE LOG DESCRIPTION TEST...
    local pidfile="$1" logfile="$2" what="$3"
    shift 3
    for _ in $(seq 1 300); do
        if "$@"; then return 0; fi
        if ! alive "$pidfile"; then
            log "$what exited; the end of its log ($logfile):"
            tail -n 30 "$logfile" >&2
            exit 1
        fi
        sleep 0.1
    done
    log "$what did not come up within 30 s; see $logfile"
    exit 1
}
containerd_answers() { ctr --address "$1" version >/dev/null 2>&1; }

# containerd: use one that answers, else start converge's own with its own root and state.
SOCK="${CONTAINERD_SOCKET:-/run/containerd/containerd.sock}"
CTRD_ROOT=/var/lib/containerd
if ! containerd_answers "$SOCK"; then
    CTRD_DIR="$DATA_DIR/containerd"
    CTRD_ROOT="$CTRD_DIR/root"
    SOCK="/run/converge/containerd/containerd.sock"
    mkdir -p "$CTRD_DIR" /run/converge/containerd
    if ! alive "$CTRD_DIR/containerd.pid"; then
        cat >"$CTRD_DIR/config.toml" <<TOML
version = 2
root = "$CTRD_DIR/root"
state = "/run/converge/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
TOML
        log "starting a containerd for converge on $SOCK (log: $CTRD_DIR/containerd.log)"
        setsid nohup containerd --config "$CTRD_DIR/config.toml" \
            </dev/null >"$CTRD_DIR/containerd.log" 2>&1 &
        echo "$!" >"$CTRD_DIR/containerd.pid"
        wait_for "$CTRD_DIR/containerd.pid" "$CTRD_DIR/containerd.log" containerd containerd_answers "$SOCK"
    fi
fi

export CONVERGE_SERVER="unix:$DATA_DIR/entity.sock"
if alive "$DATA_DIR/up.pid"; then
    log "converge up already running (pid $(cat "$DATA_DIR/up.pid"))"
else
    log "starting converge up (data: $DATA_DIR, log: $DATA_DIR/up.log, metrics: http://127.0.0.1:9090/metrics)"
    # --containerd-root: the filesystem image GC watches for disk pressure.
    setsid nohup "$BIN" up --data-dir "$DATA_DIR" --containerd-socket "$SOCK" \
        --containerd-root "$CTRD_ROOT" --http 127.0.0.1:9090 \
        </dev/null >"$DATA_DIR/up.log" 2>&1 &
    echo "$!" >"$DATA_DIR/up.pid"
    wait_for "$DATA_DIR/up.pid" "$DATA_DIR/up.log" "converge up" test -S "$DATA_DIR/entity.sock"
fi

log "building the busybox demo image and importing it as cluster.local:5000/demo:v1"
bash "$REPO_ROOT/deploy/examples/busybox-image.sh" "$DATA_DIR/demo-image.tar"
"$BIN" artifact import "$DATA_DIR/demo-image.tar" --name cluster.local:5000/demo:v1

log "converge apply -f deploy/examples/demo-sandbox.yaml"
"$BIN" apply -f "$REPO_ROOT/deploy/examples/demo-sandbox.yaml"
log "waiting for sandbox/demo to run"
for _ in $(seq 1 60); do
    phase="$("$BIN" get sandbox/demo -o json | sed -n 's/.*"phase": *"\([a-z]*\)".*/\1/p' | head -n 1)"
    [ "$phase" = running ] && break
    sleep 1
done
"$BIN" get

cat <<MSG

converge is running (pid $(cat "$DATA_DIR/up.pid")). Try:
  export CONVERGE_SERVER=unix:$DATA_DIR/entity.sock
  $BIN get sandbox/demo -o yaml
  $BIN describe sandbox/demo --data-dir $DATA_DIR
  $BIN logs sandbox/demo --data-dir $DATA_DIR
  $BIN watch
  $BIN reconcile --dry-run --data-dir $DATA_DIR --containerd-socket $SOCK --containerd-root $CTRD_ROOT
To stop it:
  kill $(cat "$DATA_DIR/up.pid")
MSG
