"""crius-install for real against temporary host roots (needs root: it chroots to run crius).

A host root here holds only the shared libraries crius links, so `crius config` (the installer's
config check) runs in it; the systemd tests add busybox as /bin/sh and a recording systemctl.
The nsenter tests stand a process in for the node's PID 1: its own mount namespace has the host
root as / (pivot_root), and CRIUS_INSTALL_HOST_PID points the installer at it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import BIN_DIR, REPO, make_host_root, run, snapshot

MANIFEST = "var/lib/crius-installer/manifest"
WRITTEN = {
    "usr/local/bin/crius": 0o755,
    "usr/local/bin/crius-conmon": 0o755,
    "etc/crius/crius.toml": 0o644,
    "etc/cni/net.d/10-crius-bridge.conflist": 0o644,
    "etc/systemd/system/crius.service": 0o644,
}
BUSYBOX = "/bin/busybox"
# The image runs the installer with busybox sh; Debian's /bin/sh is dash.
SHELLS = {"busybox": [BUSYBOX, "sh"], "dash": ["dash"], "bash-posix": ["bash", "--posix"]}
SYSTEMCTL_LOG = "systemctl.log"
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> /systemctl.log
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root (make test runs as root)")


@pytest.fixture
def host(tmp_path, payload) -> Path:
    return make_host_root(tmp_path / "host", payload / "bin" / "crius")


def install(payload: Path, host: Path, *args, shell=("busybox",), expect=0, env=None):
    cmd = SHELLS[shell[0]] + [payload / "crius-install", "--host-root", host, *args]
    result = run(cmd, env=None if env is None else {**os.environ, **env})
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def add_systemd(host: Path) -> None:
    """A host that runs systemd: /run/systemd/system, a shell, and a systemctl that records."""
    (host / "run/systemd/system").mkdir(parents=True)
    (host / "bin").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, host / "bin/busybox")
    os.symlink("busybox", host / "bin/sh")
    (host / "usr/bin").mkdir(parents=True, exist_ok=True)
    (host / "usr/bin/systemctl").write_text(FAKE_SYSTEMCTL)
    (host / "usr/bin/systemctl").chmod(0o755)


def systemctl_calls(host: Path) -> list[str]:
    log = host / SYSTEMCTL_LOG
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


@pytest.mark.parametrize("shell", SHELLS)
def test_install_twice_then_uninstall(payload, host, shell):
    before = snapshot(host)
    first = install(payload, host, shell=(shell,))
    for rel, mode in WRITTEN.items():
        path = host / rel
        assert stat.S_IMODE(path.stat().st_mode) == mode, rel
        assert f"installed /{rel}" in first.stdout
    assert (host / "usr/local/bin/crius").read_bytes() == (payload / "bin/crius").read_bytes()
    assert (host / "etc/crius/crius.toml").read_bytes() == (payload / "etc/crius.toml").read_bytes()
    unit = (host / "etc/systemd/system/crius.service").read_text()
    assert "KillMode=process" in unit and "ExecStart=/usr/local/bin/crius" in unit
    manifest = (host / MANIFEST).read_text()
    assert all(f" /{rel}\n" in manifest for rel in WRITTEN)
    assert "no systemd on this host" in first.stdout and "NOT started" in first.stdout

    installed = snapshot(host)
    second = install(payload, host, shell=(shell,))
    assert snapshot(host) == installed, "a second run must change nothing (contents, modes, mtimes)"
    assert "nothing changed" in second.stdout
    assert all(f"unchanged /{rel}" in second.stdout for rel in WRITTEN)

    removed = install(payload, host, "--uninstall", shell=(shell,))
    assert snapshot(host) == before, removed.stdout
    again = install(payload, host, "--uninstall", shell=(shell,))
    assert "nothing to uninstall" in again.stdout


def test_existing_cni_conflist_is_kept(payload, host):
    conf_dir = host / "etc/cni/net.d"
    conf_dir.mkdir(parents=True)
    theirs = conf_dir / "05-cluster.conflist"
    theirs.write_text('{"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "ptp"}]}\n')
    before = snapshot(host)
    out = install(payload, host).stdout
    assert not (conf_dir / "10-crius-bridge.conflist").exists()
    assert "kept CNI config /etc/cni/net.d/05-cluster.conflist" in out
    install(payload, host, "--uninstall")
    assert snapshot(host) == before


def test_custom_cni_conf_dir(payload, host):
    out = install(payload, host, "--cni-conf-dir", "/etc/crius/cni").stdout
    assert (host / "etc/crius/cni/10-crius-bridge.conflist").exists()
    assert "installed /etc/crius/cni/10-crius-bridge.conflist" in out


def test_foreign_crius_toml_is_kept(payload, host):
    (host / "etc/crius").mkdir(parents=True)
    mine = host / "etc/crius/crius.toml"
    mine.write_text('[log]\nlevel = "debug"\n')
    before = snapshot(host)
    out = install(payload, host).stdout
    assert "kept /etc/crius/crius.toml (not written by crius-install)" in out
    assert mine.read_text() == '[log]\nlevel = "debug"\n'
    install(payload, host, "--uninstall")
    assert snapshot(host) == before


def test_file_changed_after_install_is_kept_on_uninstall(payload, host):
    install(payload, host)
    edited = host / "etc/crius/crius.toml"
    edited.write_text(edited.read_text() + "# local edit\n")
    out = install(payload, host, "--uninstall").stdout
    assert "kept /etc/crius/crius.toml (changed since crius-install wrote it)" in out
    assert edited.exists()
    assert not (host / "usr/local/bin/crius").exists()


def test_config_drop_in_follows_the_chart(payload, host, tmp_path):
    config = tmp_path / "chart.toml"
    config.write_text('[image.registries."registry.k8s.io"]\nmirrors = ["127.0.0.1:5000/k8s"]\ninsecure = true\n')
    drop_in = host / "etc/crius/crius.d/50-helm.toml"

    out = install(payload, host, "--config", config).stdout
    assert drop_in.read_text() == config.read_text()
    assert "installed /etc/crius/crius.d/50-helm.toml" in out
    assert "unchanged /etc/crius/crius.d/50-helm.toml" in install(payload, host, "--config", config).stdout

    config.write_text(config.read_text().replace("insecure = true", "insecure = false"))
    out = install(payload, host, "--config", config).stdout
    assert "updated /etc/crius/crius.d/50-helm.toml" in out
    assert "unchanged /usr/local/bin/crius" in out

    out = install(payload, host).stdout
    assert not drop_in.exists() and "removed /etc/crius/crius.d/50-helm.toml" in out


def test_invalid_config_changes_nothing(payload, host, tmp_path):
    config = tmp_path / "chart.toml"
    config.write_text("[image]\nmax_concurent_downloads = 3\n")
    before = snapshot(host)
    result = install(payload, host, "--config", config, expect=1)
    assert "max_concurent_downloads" in result.stderr
    assert "nothing was changed" in result.stderr
    assert snapshot(host) == before


def test_invalid_config_keeps_a_working_install(payload, host, tmp_path):
    install(payload, host)
    installed = snapshot(host)
    config = tmp_path / "chart.toml"
    config.write_text('[runtime]\ndefault_handler = "kata"\n')
    install(payload, host, "--config", config, expect=1)
    assert snapshot(host) == installed


def test_systemd_host_enables_and_restarts_only_on_change(payload, host, tmp_path):
    add_systemd(host)
    before = snapshot(host)
    out = install(payload, host).stdout
    assert systemctl_calls(host) == ["daemon-reload", "enable crius.service", "restart crius.service"]
    assert "crius.service is enabled and started" in out

    install(payload, host)
    assert systemctl_calls(host) == ["enable --now crius.service"]

    # crius follows the CNI conf dir by itself: a restored conflist needs no restart.
    (host / "etc/cni/net.d/10-crius-bridge.conflist").unlink()
    assert "installed /etc/cni/net.d/10-crius-bridge.conflist" in install(payload, host).stdout
    assert systemctl_calls(host) == ["enable --now crius.service"]

    config = tmp_path / "chart.toml"
    config.write_text('[log]\nformat = "json"\n')
    install(payload, host, "--config", config)
    assert systemctl_calls(host) == ["enable crius.service", "restart crius.service"], "no daemon-reload: unit unchanged"

    install(payload, host, "--uninstall")
    assert systemctl_calls(host) == ["disable --now crius.service", "daemon-reload"]
    assert snapshot(host) == before


def mounts_of(path: Path) -> list[str]:
    """Lines of this process's mountinfo that mention path (a bind mount left behind)."""
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


# Runs in a new mount namespace (private propagation, so nothing reaches ours): makes the host
# root a mount point, pivots into it with no put_old dir (`pivot_root . .` stacks the old root on
# the new one; `umount -l .` drops it), then sleeps as the namespace's only process. setns to
# this namespace lands in the host root, as `nsenter -t 1 -m` lands in the node's /.
HOST_NS_SCRIPT = """set -e
mount --bind "$1" "$1"
cd "$1"
pivot_root . .
/bin/busybox umount -l .
echo ready
exec /bin/busybox sleep 3600
"""


@pytest.fixture
def host_ns(host):
    """A systemd host root (add_systemd) and the PID of a process whose mount namespace has it as /."""
    add_systemd(host)
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", HOST_NS_SCRIPT, "sh", str(host)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready = proc.stdout.readline()
        if ready != "ready\n":
            proc.wait(timeout=10)
            pytest.fail(f"host namespace did not start (exit {proc.returncode}): {proc.stderr.read()}")
        assert sorted(os.listdir(f"/proc/{proc.pid}/root")) == sorted(os.listdir(host))
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert mounts_of(host) == [], "the host root's bind mount leaked into the test's namespace"


# busybox sh runs busybox's nsenter applet (as in the image); dash and bash run util-linux's.
@pytest.mark.parametrize("shell", SHELLS)
def test_nsenter_mode_installs_through_the_host_mount_namespace(payload, host, host_ns, shell):
    nsenter = ("--host-exec", "nsenter")
    env = {"CRIUS_INSTALL_HOST_PID": str(host_ns)}
    assert mounts_of(host) == [], "the namespace's mounts must stay private to it"
    before = snapshot(host)

    first = install(payload, host, *nsenter, shell=(shell,), env=env)
    assert "config checked with the new crius" in first.stdout
    for rel, mode in WRITTEN.items():
        assert stat.S_IMODE((host / rel).stat().st_mode) == mode, rel
        assert f"installed /{rel}" in first.stdout
    assert (host / "usr/local/bin/crius").read_bytes() == (payload / "bin/crius").read_bytes()
    assert systemctl_calls(host) == ["daemon-reload", "enable crius.service", "restart crius.service"]
    assert "crius.service is enabled and started" in first.stdout

    installed = snapshot(host)
    second = install(payload, host, *nsenter, shell=(shell,), env=env)
    assert "nothing changed" in second.stdout
    assert systemctl_calls(host) == ["enable --now crius.service"]
    assert snapshot(host) == installed, "a second run must change nothing (contents, modes, mtimes)"

    install(payload, host, *nsenter, "--uninstall", shell=(shell,), env=env)
    assert systemctl_calls(host) == ["disable --now crius.service", "daemon-reload"]
    assert snapshot(host) == before


def test_nsenter_mode_refuses_an_invalid_config(payload, host, host_ns, tmp_path):
    config = tmp_path / "chart.toml"
    config.write_text("[image]\nmax_concurent_downloads = 3\n")
    before = snapshot(host)
    result = install(payload, host, "--host-exec", "nsenter", "--config", config, expect=1,
                     env={"CRIUS_INSTALL_HOST_PID": str(host_ns)})
    assert "max_concurent_downloads" in result.stderr
    assert "nothing was changed" in result.stderr
    assert systemctl_calls(host) == []
    assert snapshot(host) == before


def test_no_start_writes_files_only(payload, host):
    add_systemd(host)
    out = install(payload, host, "--no-start").stdout
    assert systemctl_calls(host) == []
    assert "not starting crius.service" in out
    assert (host / "etc/systemd/system/crius.service").exists()


def test_wait_marks_ready_and_stops_on_sigterm(payload, host, tmp_path):
    import signal
    import subprocess
    import time

    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [BUSYBOX, "sh", payload / "crius-install", "--host-root", host, "--wait", "--ready-file", ready],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_arguments(payload, host):
    assert "unknown argument" in install(payload, host, "--frobnicate", expect=1).stderr
    assert "chroot or nsenter" in install(payload, host, "--host-exec", "ssh", expect=1).stderr
    bad_pid = install(payload, host, "--host-exec", "nsenter", expect=1, env={"CRIUS_INSTALL_HOST_PID": "1x"})
    assert "CRIUS_INSTALL_HOST_PID must be a process id" in bad_pid.stderr
    assert "usage:" in install(payload, host, "--help").stdout


def test_make_install_destdir(tmp_path):
    """`make install` (PREFIX/DESTDIR) lays out the same files for a manual install."""
    dest = tmp_path / "root"
    result = run(["make", "--no-print-directory", "-C", REPO, "install", f"BIN_DIR={BIN_DIR}",
                  f"PAYLOAD_DIR={tmp_path / 'payload'}", f"DESTDIR={dest}", "PREFIX=/usr"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (dest / "usr/bin/crius").read_bytes() == (BIN_DIR / "crius").read_bytes()
    assert os.access(dest / "usr/bin/crius-conmon", os.X_OK)
    assert "ExecStart=/usr/bin/crius\n" in (dest / "etc/systemd/system/crius.service").read_text()
    assert (dest / "etc/crius/crius.toml").exists() and (dest / "etc/crius/crius.d").is_dir()
    assert (dest / "etc/cni/net.d/10-crius-bridge.conflist").exists()


def test_make_dist_tarball_holds_the_installer(tmp_path):
    result = run(["make", "--no-print-directory", "-C", REPO, "dist", f"BIN_DIR={BIN_DIR}",
                  f"PAYLOAD_DIR={tmp_path / 'payload'}", f"DIST_DIR={tmp_path}"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (tarball,) = tmp_path.glob("crius-*-linux-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        assert all(m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    top = tarball.name.split("-linux-")[0]
    assert {f"{top}/crius-install", f"{top}/bin/crius", f"{top}/etc/crius.toml",
            f"{top}/systemd/crius.service", f"{top}/cni/10-crius-bridge.conflist"} <= names
