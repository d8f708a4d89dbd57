#!/bin/sh
# A three-member etcd cluster on one machine, on loopback ports, for trying converge's
# distributed mode (two servers or controllers against one store). Not for production:
# all members share one disk and one failure domain, and traffic is plain HTTP.
#
#   deploy/etcd/three-members.sh start [DIR]   start members 1..3, data under DIR
#   deploy/etcd/three-members.sh stop  [DIR]   stop the members this script started
#   deploy/etcd/three-members.sh status [DIR]  endpoint health and leader
#
# DIR defaults to ./etcd-cluster. Client URLs: http://127.0.0.1:23791,23792,23793, so
#   converge server --store etcd:http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
# Ports can be moved with ETCD_BASE_CLIENT_PORT (default 23790) and ETCD_BASE_PEER_PORT
# (default 23800); member N uses base+N.
set -eu

command=${1:-start}
dir=${2:-./etcd-cluster}
client_base=${ETCD_BASE_CLIENT_PORT:-23790}
peer_base=${ETCD_BASE_PEER_PORT:-23800}
etcd_bin=${ETCD:-etcd}
etcdctl_bin=${ETCDCTL:-etcdctl}

endpoints() {
    sep=""
    for n in 1 2 3; do
        printf '%shttp://127.0.0.1:%s' "$sep" $((client_base + n))
        sep=","
    done
}

initial_cluster() {
    sep=""
    for n in 1 2 3; do
        printf '%sm%s=http://127.0.0.1:%s' "$sep" "$n" $((peer_base + n))
        sep=","
    done
}

start() {
    command -v "$etcd_bin" >/dev/null || { echo "error: $etcd_bin not found (apt-get install etcd-server)" >&2; exit 1; }
    mkdir -p "$dir"
    chmod 700 "$dir"
    # Only a fresh data dir bootstraps a new cluster; existing members rejoin theirs.
    for n in 1 2 3; do
        pidfile="$dir/m$n.pid"
        if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "member m$n already running (pid $(cat "$pidfile"))"
            continue
        fi
        state=new
        [ -d "$dir/m$n.etcd/member" ] && state=existing
        "$etcd_bin" \
            --name "m$n" \
            --data-dir "$dir/m$n.etcd" \
            --listen-client-urls "http://127.0.0.1:$((client_base + n))" \
            --advertise-client-urls "http://127.0.0.1:$((client_base + n))" \
            --listen-peer-urls "http://127.0.0.1:$((peer_base + n))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((peer_base + n))" \
            --initial-cluster "$(initial_cluster)" \
            --initial-cluster-token converge-try \
            --initial-cluster-state "$state" \
            --auto-compaction-mode revision \
            --auto-compaction-retention 10000 \
            >"$dir/m$n.log" 2>&1 &
        echo $! >"$pidfile"
        echo "started member m$n (pid $!, log $dir/m$n.log)"
    done
    # Wait until the cluster has a leader and answers.
    tries=0
    until ETCDCTL_API=3 "$etcdctl_bin" --endpoints "$(endpoints)" --dial-timeout 1s endpoint health >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 30 ]; then
            echo "error: the cluster did not become healthy; see $dir/m*.log" >&2
            exit 1
        fi
        sleep 1
    done
    echo "cluster healthy; store flag:"
    echo "  --store etcd:$(endpoints)"
}

stop() {
    for n in 1 2 3; do
        pidfile="$dir/m$n.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only the process this script started, by its recorded pid, and only if it is etcd.
        if kill -0 "$pid" 2>/dev/null && grep -q etcd "/proc/$pid/cmdline" 2>/dev/null; then
            kill "$pid"
            echo "stopped member m$n (pid $pid)"
        fi
        rm -f "$pidfile"
    done
}

status() {
    ETCDCTL_API=3 "$etcdctl_bin" --endpoints "$(endpoints)" endpoint status --write-out table
}

case "$command" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac
