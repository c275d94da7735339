#!/usr/bin/env bash
# Builds the crius installer image as an OCI image layout directory, without a container engine.
#
#   build-image.sh BIN_DIR OUT_DIR TAG
#
# Two layers: busybox-static with its applet links (the installer's shell and tools), then the
# payload (payload.sh) under /opt/crius. Entrypoint: /opt/crius/crius-install. Reproducible:
# every entry has mtime SOURCE_DATE_EPOCH (default: the last commit's time), owner 0:0, fixed
# modes, sorted names, and gzip stores no name or time; the same inputs give the same digests.
# Writes OUT_DIR from scratch (through OUT_DIR.tmp); push it with
#   skopeo copy oci:OUT_DIR:TAG docker://HOST/crius:TAG
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 BIN_DIR OUT_DIR TAG" >&2; exit 2; }
bin_dir=$1 out=$2 tag=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
busybox=${BUSYBOX:-/bin/busybox}

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)
fi
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)

case $(dpkg --print-architecture 2>/dev/null || uname -m) in
    amd64|x86_64) arch=amd64 variant= ;;
    arm64|aarch64) arch=arm64 variant=v8 ;;
    armhf) arch=arm variant=v7 ;;
    ppc64el|ppc64le) arch=ppc64le variant= ;;
    s390x) arch=s390x variant= ;;
    riscv64) arch=riscv64 variant= ;;
    *) echo "build-image: unknown architecture" >&2; exit 1 ;;
esac

[ -x "$busybox" ] || { echo "build-image: $busybox not found (Debian package busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
    echo "build-image: $busybox is dynamically linked: install busybox-static, not busybox" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Layer 1: busybox-static, a link per applet in /bin, /tmp.
base=$work/base
mkdir -p "$base/bin" "$base/tmp" "$base/usr/share/doc/busybox-static"
cp "$busybox" "$base/bin/busybox"
for applet in $("$busybox" --list); do
    case $applet in busybox|'['|'[[') ;; *) ln -s busybox "$base/bin/$applet" ;; esac
done
ln -s busybox "$base/bin/["
ln -s busybox "$base/bin/[["
if [ -f /usr/share/doc/busybox-static/copyright ]; then
    cp /usr/share/doc/busybox-static/copyright "$base/usr/share/doc/busybox-static/"
fi

# Layer 2: the payload under /opt/crius.
app=$work/app
mkdir -p "$app/opt"
"$here/payload.sh" "$bin_dir" "$app/opt/crius"

blobs=$work/layout/blobs/sha256
mkdir -p "$blobs"

# layer DIR -> prints "DIGEST DIFF_ID SIZE" and stores the gzip blob.
layer() {
    local dir=$1
    # Modes do not depend on the umask or checkout: executables 0755, other files 0644.
    find "$dir" -type d -exec chmod 0755 {} +
    find "$dir" -type f -perm /111 -exec chmod 0755 {} +
    find "$dir" -type f ! -perm /111 -exec chmod 0644 {} +
    [ ! -d "$dir/tmp" ] || chmod 1777 "$dir/tmp"
    (cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) > "$work/list"
    tar --create --file "$work/layer.tar" --directory "$dir" --no-recursion --files-from "$work/list" \
        --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner
    local diff_id
    diff_id=$(sha256sum < "$work/layer.tar" | cut -d' ' -f1)
    gzip -n -6 < "$work/layer.tar" > "$work/layer.tar.gz"
    local digest size
    digest=$(sha256sum < "$work/layer.tar.gz" | cut -d' ' -f1)
    size=$(stat -c %s "$work/layer.tar.gz")
    mv "$work/layer.tar.gz" "$blobs/$digest"
    rm -f "$work/layer.tar"
    echo "$digest $diff_id $size"
}

# blob FILE MEDIA_TYPE -> prints a descriptor and stores the blob.
blob() {
    local digest size
    digest=$(sha256sum < "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    cp "$1" "$blobs/$digest"
    jq -cn --arg mt "$2" --arg d "sha256:$digest" --argjson s "$size" \
        '{mediaType: $mt, digest: $d, size: $s}'
}

read -r base_digest base_diff base_size < <(layer "$base")
read -r app_digest app_diff app_size < <(layer "$app")

jq -cn --arg created "$created" --arg arch "$arch" --arg variant "$variant" --arg version "$version" \
    --arg base_diff "sha256:$base_diff" --arg app_diff "sha256:$app_diff" '
    {
      created: $created,
      architecture: $arch,
      os: "linux",
      config: {
        Env: ["PATH=/bin"],
        Entrypoint: ["/opt/crius/crius-install"],
        WorkingDir: "/",
        Labels: {
          "org.opencontainers.image.title": "crius",
          "org.opencontainers.image.description": "crius node installer: copies crius onto the host and starts crius.service",
          "org.opencontainers.image.version": $version
        }
      },
      rootfs: {type: "layers", diff_ids: [$base_diff, $app_diff]},
      history: [
        {created: $created, created_by: "busybox-static and its applet links"},
        {created: $created, created_by: "crius, crius-conmon, default config, CNI conflist, crius-install"}
      ]
    }
    | if $variant != "" then .variant = $variant else . end' > "$work/config.json"
config_desc=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)

layer_mt=application/vnd.oci.image.layer.v1.tar+gzip
jq -cn --argjson config "$config_desc" --arg mt "$layer_mt" --arg created "$created" --arg version "$version" \
    --arg l1 "sha256:$base_digest" --argjson s1 "$base_size" \
    --arg l2 "sha256:$app_digest" --argjson s2 "$app_size" '
    {
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: $config,
      layers: [{mediaType: $mt, digest: $l1, size: $s1}, {mediaType: $mt, digest: $l2, size: $s2}],
      annotations: {"org.opencontainers.image.created": $created, "org.opencontainers.image.version": $version}
    }' > "$work/manifest.json"
manifest_desc=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)

jq -cn --argjson m "$manifest_desc" --arg tag "$tag" --arg arch "$arch" '
    {
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [$m + {platform: {architecture: $arch, os: "linux"},
                        annotations: {"org.opencontainers.image.ref.name": $tag}}]
    }' > "$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"

rm -rf "$out.tmp"
mkdir -p "$(dirname "$out")"
mv "$work/layout" "$out.tmp"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "built $out:$tag (manifest $(jq -r .digest <<< "$manifest_desc"), $arch)"
