#!/bin/sh
# Installs a built converge binary, its systemd units, the containerd config fragment and
# a fresh bearer token. Run as root from the repository root after
# `cargo build --release -p converge`.
#
#   deploy/install.sh [--prefix /usr/local] [--binary target/release/converge] [--no-token]
#                     [--containerd-config] [--dry-run]
#
# Never overwrites an existing token, env file or containerd config; never starts or
# enables anything (the last lines say what to run).
set -eu

prefix=/usr/local
binary=target/release/converge
make_token=yes
containerd_config=no
dry=no
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --no-token) make_token=no; shift ;;
        --containerd-config) containerd_config=yes; shift ;;
        --dry-run) dry=yes; shift ;;
        *) echo "usage: $0 [--prefix DIR] [--binary PATH] [--no-token] [--containerd-config] [--dry-run]" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
unit_dir=${UNIT_DIR:-/etc/systemd/system}
conf_dir=${CONF_DIR:-/etc/converge}

run() {
    if [ "$dry" = yes ]; then
        echo "+ $*"
    else
        "$@"
    fi
}

[ -x "$binary" ] || { echo "error: $binary is not an executable; build it first (cargo build --release -p converge)" >&2; exit 1; }
if [ "$dry" = no ] && [ "$(id -u)" -ne 0 ]; then
    echo "error: run as root (or with --dry-run to see the steps)" >&2
    exit 1
fi

run install -D -m 0755 "$binary" "$prefix/bin/converge"
for unit in converge-server.service converge-controller.service converge-up.service; do
    # The units name /usr/local/bin/converge; follow --prefix.
    if [ "$dry" = yes ]; then
        echo "+ install $here/systemd/$unit -> $unit_dir/$unit (ExecStart under $prefix/bin)"
    else
        sed "s|/usr/local/bin/converge|$prefix/bin/converge|g" "$here/systemd/$unit" >"$unit_dir/$unit.tmp"
        chmod 0644 "$unit_dir/$unit.tmp"
        mv "$unit_dir/$unit.tmp" "$unit_dir/$unit"
    fi
done
run install -d -m 0755 "$conf_dir"
if [ ! -e "$conf_dir/converge.env" ]; then
    run install -m 0644 "$here/systemd/converge.env.example" "$conf_dir/converge.env"
fi
if [ "$make_token" = yes ] && [ ! -e "$conf_dir/token" ]; then
    if [ "$dry" = yes ]; then
        echo "+ write a random token to $conf_dir/token (mode 0600)"
    else
        old_umask=$(umask)
        umask 077
        head -c 32 /dev/urandom | base64 | tr -d '\n=' >"$conf_dir/token.tmp"
        echo >>"$conf_dir/token.tmp"
        mv "$conf_dir/token.tmp" "$conf_dir/token"
        umask "$old_umask"
    fi
    echo "created $conf_dir/token: copy it (mode 0600) to every node and client that must reach a TCP entity server"
fi
if [ "$containerd_config" = yes ]; then
    if [ -e /etc/containerd/config.toml ]; then
        echo "kept the existing /etc/containerd/config.toml; compare it with $here/containerd/config.toml"
    else
        run install -D -m 0644 "$here/containerd/config.toml" /etc/containerd/config.toml
    fi
fi
run systemctl daemon-reload
cat <<MSG
installed. Next:
  single node:  systemctl enable --now converge-up.service
  distributed:  edit $conf_dir/converge.env, then
                systemctl enable --now converge-server.service converge-controller.service
MSG
