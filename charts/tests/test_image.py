"""`make image`: an OCI layout that is reproducible, unpacks with umoci, runs its entrypoint in a
chroot like a container would, and pushes to a loopback registry with skopeo."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from conftest import BIN_DIR, REPO, crius_bin, http_get, json_out, make_host_root, run, snapshot

TAG = "test"
ENTRYPOINT = ["/opt/crius/crius-install"]
PAYLOAD_FILES = {
    "opt/crius/crius-install",
    "opt/crius/bin/crius",
    "opt/crius/bin/crius-conmon",
    "opt/crius/etc/crius.toml",
    "opt/crius/cni/10-crius-bridge.conflist",
    "opt/crius/systemd/crius.service",
}


def make_image(out: Path, epoch: str = "1700000000") -> Path:
    crius_bin()
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch)
    result = run(
        ["make", "--no-print-directory", "-C", REPO, "image", f"BIN_DIR={BIN_DIR}", f"IMAGE_DIR={out}", f"IMAGE_TAG={TAG}"],
        env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("image") / "crius")


def layer_members(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_layout_is_reproducible(image, tmp_path):
    again = make_image(tmp_path / "crius")
    assert snapshot(again).keys() == snapshot(image).keys()
    assert (again / "index.json").read_bytes() == (image / "index.json").read_bytes()
    for blob in (image / "blobs/sha256").iterdir():
        assert (again / "blobs/sha256" / blob.name).read_bytes() == blob.read_bytes()


def test_layers_are_normalized(image):
    index = json.loads((image / "index.json").read_text())
    (desc,) = index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == TAG
    manifest = json.loads((image / "blobs/sha256" / desc["digest"].split(":")[1]).read_text())
    members = {}
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        members.update(layer_members((image / "blobs/sha256" / layer["digest"].split(":")[1]).read_bytes()))
    assert {m.uid for m in members.values()} == {0} and {m.gid for m in members.values()} == {0}
    assert {m.mtime for m in members.values()} == {1700000000}
    assert PAYLOAD_FILES <= members.keys()
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["opt/crius/bin/crius"].mode == 0o755


def test_entrypoint_installs_from_the_unpacked_image(image, tmp_path):
    """The image's own busybox runs the installer, as a container would, into /host."""
    if os.geteuid() != 0:
        pytest.skip("umoci unpack and chroot need root")
    bundle = tmp_path / "bundle"
    unpacked = run(["umoci", "unpack", "--image", f"{image}:{TAG}", bundle])
    assert unpacked.returncode == 0, unpacked.stderr
    rootfs = bundle / "rootfs"
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"] == ENTRYPOINT
    assert (rootfs / "opt/crius/bin/crius").read_bytes() == crius_bin().read_bytes()

    # What a container runtime adds to the rootfs.
    (rootfs / "dev").mkdir(exist_ok=True)
    os.mknod(rootfs / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    make_host_root(rootfs / "host", crius_bin())
    result = run([shutil.which("chroot"), rootfs, *process["args"], "--host-root", "/host"], env={"PATH": "/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (rootfs / "host/usr/local/bin/crius").read_bytes() == crius_bin().read_bytes()
    assert "config checked with the new crius" in result.stdout
    assert "no systemd on this host" in result.stdout


def test_push_to_registry_and_inspect(image, registry):
    ref = f"docker://{registry}/crius:{TAG}"
    pushed = run(["skopeo", "copy", "--quiet", f"oci:{image}:{TAG}", ref, "--dest-tls-verify=false"])
    assert pushed.returncode == 0, pushed.stderr

    config = json_out(run(["skopeo", "inspect", "--config", "--tls-verify=false", ref]))
    assert config["config"]["Entrypoint"] == ENTRYPOINT
    assert config["os"] == "linux" and config["architecture"]

    manifest = json_out(run(["skopeo", "inspect", "--raw", "--tls-verify=false", ref]))
    base, app = manifest["layers"]
    app_members = layer_members(http_get(f"http://{registry}/v2/crius/blobs/{app['digest']}"))
    assert PAYLOAD_FILES <= app_members.keys()
    assert app_members["opt/crius/bin/crius"].size == crius_bin().stat().st_size
    base_members = layer_members(http_get(f"http://{registry}/v2/crius/blobs/{base['digest']}"))
    assert {"bin/busybox", "bin/sh", "bin/chroot", "bin/nsenter", "tmp"} <= base_members.keys()
