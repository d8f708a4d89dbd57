#!/usr/bin/env bash
# Runs converge's whole test suite on a Debian machine, installing the system packages
# the tests need first (only those missing). Run as root from anywhere:
#   bash deploy/test.sh              install what is missing, then cargo test --workspace
#   bash deploy/test.sh --deps-only  only install what is missing
# Extra arguments after `--` go to cargo test (e.g. `bash deploy/test.sh -- cli_`).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGES=(containerd runc protobuf-compiler busybox-static etcd-server etcd-client skopeo nftables iproute2)

log() { printf '==> %s\n' "$*" >&2; }

install_missing_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages already installed"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "missing packages: ${missing[*]}; run as root (or install them) first"
        exit 1
    fi
    log "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        export PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found: install a Rust toolchain (rustup) first"
        exit 1
    fi
}

deps_only=false
cargo_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --deps-only) deps_only=true ;;
        --) shift; cargo_args=("$@"); break ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
    shift
done

install_missing_packages
if [ "$deps_only" = true ]; then
    exit 0
fi
ensure_cargo
cd "$REPO_ROOT"
log "cargo test --workspace --no-fail-fast"
# Every test binary prints its own "test result" line; the suite's total closes the run.
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
status=0
cargo test --workspace --no-fail-fast "${cargo_args[@]}" 2>&1 | tee "$results" || status=$?
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "%d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$results"
exit "$status"
