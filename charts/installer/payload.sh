#!/usr/bin/env bash
# Stages the installer payload: what crius-install installs, laid out as it expects.
#
#   payload.sh BIN_DIR OUT_DIR
#
# OUT_DIR/crius-install, bin/crius, bin/crius-conmon, etc/crius.toml (the built-in defaults as
# printed by `crius config`), cni/10-crius-bridge.conflist, systemd/crius.service. Used by
# `make image` (the image's /opt/crius), `make dist` and the installer tests. Writes OUT_DIR
# from scratch; touches nothing else.
set -euo pipefail

usage() { echo "usage: $0 BIN_DIR OUT_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
bin_dir=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

for b in crius crius-conmon; do
    [ -x "$bin_dir/$b" ] || {
        echo "payload: $bin_dir/$b not found: run \`make build-release\` (or pass BIN_DIR=target/debug after \`make build\`)" >&2
        exit 1
    }
done

rm -rf "$out"
mkdir -p "$out/bin" "$out/etc" "$out/cni" "$out/systemd"
install -m 0755 "$here/crius-install" "$out/crius-install"
install -m 0755 "$bin_dir/crius" "$bin_dir/crius-conmon" "$out/bin/"
install -m 0644 "$repo/cni/conf/10-crius-bridge.conflist" "$out/cni/"
install -m 0644 "$here/crius.service" "$out/systemd/"

# The defaults, independent of any /etc/crius on the build machine.
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
: > "$empty/crius.toml"
{
    echo "# crius configuration: the built-in defaults (\`crius config\`), see docs/config.md."
    echo "# Local changes belong in /etc/crius/crius.d/*.toml drop-ins; the Helm chart writes"
    echo "# /etc/crius/crius.d/50-helm.toml."
    echo
    "$bin_dir/crius" --config "$empty/crius.toml" --config-dir "$empty/none" config
} > "$out/etc/crius.toml"
chmod 0644 "$out/etc/crius.toml"
