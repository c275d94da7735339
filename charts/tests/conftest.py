"""Shared fixtures of the chart, installer and image tests (run by `make chart-test`).

Owns: locating the repo and the crius binaries (CRIUS_BIN_DIR, default target/debug), rendering
the chart with Helm's own engine (helm-python-sdk), staging the installer payload, temporary
host roots that crius can run in (chroot), and a loopback `docker-registry`. Tests that need
root (chroot) are the installer and image tests; `make test` runs as root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "crius"
INSTALLER = REPO / "charts" / "installer"
VALUE_SETS_DIR = Path(__file__).resolve().parent / "values"
BIN_DIR = Path(os.environ.get("CRIUS_BIN_DIR", REPO / "target" / "debug"))
RELEASE = "crius"
NAMESPACE = "kube-system"


def value_sets() -> dict[str, dict]:
    """`default` (no values) plus every charts/tests/values/*.yaml, by file stem."""
    sets = {"default": {}}
    for path in sorted(VALUE_SETS_DIR.glob("*.yaml")):
        sets[path.stem] = yaml.safe_load(path.read_text()) or {}
    return sets


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict | None = None, name: str = RELEASE) -> dict[str, str]:
    """Template path → rendered text, as `helm template` (schema checked first, as install does)."""
    chart.validate_schema(values or {})
    return chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object of a render (NOTES.txt excluded), in template order."""
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def crius_toml(objects: list[dict]) -> str:
    (config_map,) = find(objects, "ConfigMap")
    return config_map["data"]["crius.toml"]


def crius_bin() -> Path:
    path = BIN_DIR / "crius"
    if not path.exists():
        pytest.fail(f"{path} not found: run `make build` (or set CRIUS_BIN_DIR)")
    return path


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Runs cmd, capturing text output; never raises on a non-zero exit."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run([str(c) for c in cmd], check=False, **kwargs)


@pytest.fixture(scope="session")
def payload(tmp_path_factory) -> Path:
    """The installer payload staged by payload.sh from BIN_DIR."""
    crius_bin()
    out = tmp_path_factory.mktemp("payload") / "crius"
    result = run([INSTALLER / "payload.sh", BIN_DIR, out])
    assert result.returncode == 0, result.stderr
    return out


def make_host_root(path: Path, binary: Path) -> Path:
    """A directory crius can run in with chroot: only the shared libraries `binary` links."""
    path.mkdir(parents=True, exist_ok=True)
    out = run(["ldd", binary]).stdout
    for word in out.split():
        if word.startswith("/") and Path(word).exists():
            dest = path / word.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(word, dest)
    return path


def snapshot(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every entry under root: relative path → (kind, mode, mtime_ns, sha256 of content)."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel in ignore:
                continue
            st = path.lstat()
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir", st.st_mode)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[rel] = ("file", st.st_mode, st.st_mtime_ns, digest)
    return entries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, headers: dict | None = None, timeout: float = 10) -> bytes:
    """GET without any proxy from the environment (loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers=headers or {})
    with opener.open(request, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """`docker-registry` (distribution) on a free 127.0.0.1 port with private storage; yields HOST:PORT."""
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry not found: run `make deps-test` (Debian package docker-registry)")
    work = tmp_path_factory.mktemp("registry")
    for _attempt in range(5):
        addr = f"127.0.0.1:{free_port()}"
        config = work / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n"
            f"http:\n  addr: {addr}\n"
        )
        log = open(work / "registry.log", "w")
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )
        ready = False
        deadline = time.monotonic() + 10
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                http_get(f"http://{addr}/v2/", timeout=1)
                ready = True
            except OSError:
                time.sleep(0.1)
        if ready:
            try:
                yield addr
            finally:
                proc.kill()
                proc.wait()
                log.close()
            return
        proc.kill()
        proc.wait()
        log.close()
        if "address already in use" not in (work / "registry.log").read_text():
            break
    pytest.fail("docker-registry did not start:\n" + (work / "registry.log").read_text()[-2000:])


def json_out(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
