#!/usr/bin/env bash
# Builds a small OCI image archive (oci-archive tar) from Debian's busybox-static, for trying
# converge without any outside registry:
#
#   bash deploy/examples/busybox-image.sh OUT.tar
#   converge artifact import OUT.tar --name cluster.local:5000/demo:v1
set -euo pipefail

OUT="${1:?usage: busybox-image.sh OUT.tar}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
[ -x "$BUSYBOX" ] || { echo "error: $BUSYBOX not found (apt-get install busybox-static)" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"
LAYOUT="$WORK/layout"
mkdir -p "$ROOTFS/bin" "$ROOTFS/tmp" "$ROOTFS/www" "$LAYOUT/blobs/sha256"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in sh ash cat echo env httpd ls mkdir nc ps sleep wget date tail true false; do
    ln -sf busybox "$ROOTFS/bin/$applet"
done
echo "hello from converge" >"$ROOTFS/www/index.html"

blob() { # FILE -> moves it into blobs/, prints "digest size"
    local digest size
    digest="$(sha256sum "$1" | cut -d' ' -f1)"
    size="$(stat -c %s "$1")"
    mv "$1" "$LAYOUT/blobs/sha256/$digest"
    echo "sha256:$digest $size"
}

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$ROOTFS" -cf "$WORK/layer.tar" .
DIFF_ID="sha256:$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)"
gzip -n -9 "$WORK/layer.tar"
read -r LAYER_DIGEST LAYER_SIZE < <(blob "$WORK/layer.tar.gz")

cat >"$WORK/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["$DIFF_ID"]}}
JSON
read -r CONFIG_DIGEST CONFIG_SIZE < <(blob "$WORK/config.json")

cat >"$WORK/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$CONFIG_DIGEST","size":$CONFIG_SIZE},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$LAYER_DIGEST","size":$LAYER_SIZE}]}
JSON
read -r MANIFEST_DIGEST MANIFEST_SIZE < <(blob "$WORK/manifest.json")

cat >"$LAYOUT/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$MANIFEST_DIGEST","size":$MANIFEST_SIZE,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
tar -C "$LAYOUT" -cf "$OUT" oci-layout index.json blobs
echo "$OUT: manifest $MANIFEST_DIGEST" >&2
