"""charts/crius rendered by Helm's own engine: lint, schema, Kubernetes API validation, the config
that reaches the nodes, and what a values change rolls."""

from __future__ import annotations

import re
import tomllib

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

import chart_readme
from conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    crius_bin,
    crius_toml,
    find,
    manifests,
    render,
    run,
    value_sets,
)

SETS = value_sets()
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version()]
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

# kubernetes-validate knows the built-in API only. The fields of monitoring.coreos.com/v1
# ServiceMonitor this chart sets, transcribed from the prometheus-operator CRD, strict.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {"type": "string", "pattern": LABEL_NAME},
                                        },
                                        "targetLabel": {"type": "string"},
                                        "action": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def mirror_values(mirror: str = "mirror.example.com:5000/k8s") -> dict:
    return {"config": {"image": {"registries": {"registry.k8s.io": {"mirrors": [mirror], "insecure": True}}}}}


@pytest.mark.parametrize("name", SETS)
def test_lint_is_clean(name):
    report = helm.lint(CHART, SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("name", SETS)
def test_every_manifest_is_valid_kubernetes(chart, name):
    objects = manifests(render(chart, SETS[name]))
    assert objects
    for obj in objects:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where} against {version}: {'.'.join(map(str, e.path))}: {e.message}")
        labels = obj["metadata"]["labels"]
        assert all(label in labels for label in STANDARD_LABELS), where
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("name", SETS)
def test_rendered_config_is_accepted_by_crius(chart, name, tmp_path):
    toml = crius_toml(manifests(render(chart, SETS[name])))
    tomllib.loads(toml)
    (tmp_path / "50-helm.toml").write_text(toml)
    result = run([crius_bin(), "--config", tmp_path / "50-helm.toml", "--config-dir", tmp_path / "none", "config"])
    assert result.returncode == 0, result.stderr


def test_default_config_equals_crius_defaults(chart, tmp_path):
    """values.yaml's config.* restates crius's built-in defaults, nothing more."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    defaults = run([crius_bin(), "--config", empty, "--config-dir", tmp_path / "none", "config"])
    assert defaults.returncode == 0, defaults.stderr
    rendered = tomllib.loads(crius_toml(manifests(render(chart))))
    rendered["image"].setdefault("registries", {})  # no registries: no table rendered
    effective = tomllib.loads(defaults.stdout)
    # An empty default handler is decided when crius loads its config (crun when installed).
    assert rendered["runtime"]["default_handler"] == ""
    assert effective["runtime"]["default_handler"] in ("crun", "runc")
    rendered["runtime"]["default_handler"] = effective["runtime"]["default_handler"]
    assert rendered == effective


def test_mirror_reaches_config_map_and_crius(chart, tmp_path):
    toml = crius_toml(manifests(render(chart, mirror_values())))
    registry = tomllib.loads(toml)["image"]["registries"]["registry.k8s.io"]
    assert registry == {"mirrors": ["mirror.example.com:5000/k8s"], "insecure": True}
    (tmp_path / "crius.toml").write_text(toml)
    result = run([crius_bin(), "--config", tmp_path / "crius.toml", "--config-dir", tmp_path / "none", "config"])
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert effective["image"]["registries"]["registry.k8s.io"]["mirrors"] == ["mirror.example.com:5000/k8s"]
    assert effective["image"]["registries"]["registry.k8s.io"]["insecure"] is True


def test_strings_are_escaped_for_toml(chart, tmp_path):
    level = 'crius=debug,h2="x"\\<&>'
    toml = crius_toml(manifests(render(chart, {"config": {"log": {"level": level}}})))
    assert tomllib.loads(toml)["log"]["level"] == level


def test_values_change_rolls_only_the_config(chart):
    before = {(o["kind"], o["metadata"]["name"]): o for o in manifests(render(chart))}
    after = {(o["kind"], o["metadata"]["name"]): o for o in manifests(render(chart, mirror_values()))}
    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {("ConfigMap", "crius-config"), ("DaemonSet", "crius-installer")}
    ds_before, ds_after = before[("DaemonSet", "crius-installer")], after[("DaemonSet", "crius-installer")]
    ann_before = ds_before["spec"]["template"]["metadata"]["annotations"]
    ann_after = dict(ds_after["spec"]["template"]["metadata"]["annotations"])
    assert ann_before["checksum/config"] != ann_after["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", ann_after["checksum/config"])
    # Nothing but the checksum differs in the DaemonSet.
    ds_after["spec"]["template"]["metadata"]["annotations"]["checksum/config"] = ann_before["checksum/config"]
    assert ds_after == ds_before
    # The same values render the same checksum: no rollout without a change.
    again = find(manifests(render(chart, mirror_values())), "DaemonSet")[0]
    assert again["spec"]["template"]["metadata"]["annotations"] == ann_after


def test_daemonset_installer_pod(chart):
    (ds,) = find(manifests(render(chart)), "DaemonSet")
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    assert "--config=/etc/crius-chart/crius.toml" in container["args"]
    assert "--wait" in container["args"] and "--host-exec=nsenter" in container["args"]
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {
        "/usr/local/bin",
        "/etc/crius",
        "/etc/cni/net.d",
        "/etc/systemd/system",
        "/run/systemd",
        "/var/lib/crius-installer",
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/host/run/systemd"]["readOnly"] is True
    assert container["image"] == "crius:0.1.0"


def test_on_delete_update_strategy_has_no_rolling_update(chart):
    (ds,) = find(manifests(render(chart, {"updateStrategy": {"type": "OnDelete"}})), "DaemonSet")
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_chroot_mode_mounts_the_host_root_without_host_pid(chart):
    (ds,) = find(manifests(render(chart, SETS["handlers"])), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert "hostPID" not in pod
    assert [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v] == ["/"]
    args = pod["containers"][0]["args"]
    assert "--host-exec=chroot" in args and "--cni-conf-dir=/etc/crius/cni" in args
    assert "--no-validate" in args
    assert pod["tolerations"][0]["key"] == "example.com/dedicated"
    assert ds["metadata"]["name"] == "node-runtime-installer"


def test_uninstall_mode(chart):
    objects = manifests(render(chart, SETS["uninstall"]))
    assert not find(objects, "RuntimeClass")
    args = find(objects, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--uninstall" in args and "--no-start" in args
    assert not any(a.startswith("--config=") for a in args)


def test_runtime_classes_follow_handlers(chart):
    default = find(manifests(render(chart)), "RuntimeClass")
    assert {(rc["metadata"]["name"], rc["handler"]) for rc in default} == {("runc", "runc"), ("crun", "crun")}
    assert all(rc["scheduling"]["nodeSelector"] == {"kubernetes.io/os": "linux"} for rc in default)

    custom = find(manifests(render(chart, SETS["handlers"])), "RuntimeClass")
    assert {(rc["metadata"]["name"], rc["handler"]) for rc in custom} == {
        ("crius-crun", "crun"),
        ("crius-youki-dev", "youki-dev"),
    }
    assert all(rc["scheduling"]["tolerations"][0]["value"] == "crius" for rc in custom)

    only = find(manifests(render(chart, {"runtimeClasses": {"handlers": ["crun"]}})), "RuntimeClass")
    assert [rc["metadata"]["name"] for rc in only] == ["crun"]
    with pytest.raises(helm.HelmError, match="not a key of config.runtime.handlers"):
        render(chart, {"runtimeClasses": {"handlers": ["kata"]}})


def test_metrics_service_and_service_monitor(chart):
    objects = manifests(render(chart, SETS["metrics"]))
    (svc,) = find(objects, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": 9464, "protocol": "TCP"}]
    (ds,) = find(objects, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    (monitor,) = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert not find(manifests(render(chart)), "Service"), "metrics objects are off by default"
    assert not find(manifests(render(chart)), "ServiceMonitor")


def test_metrics_on_loopback_cannot_be_scraped(chart):
    with pytest.raises(helm.HelmError, match="0.0.0.0:9090"):
        render(chart, {"metrics": {"service": {"enabled": True}}})
    with pytest.raises(helm.HelmError, match="config.metrics.enabled"):
        render(chart, {"metrics": {"serviceMonitor": {"enabled": True}},
                       "config": {"metrics": {"enabled": False, "address": "0.0.0.0:9090"}}})


@pytest.mark.parametrize(
    "values, key",
    [
        ({"config": {"image": {"max_concurent_downloads": 3}}}, "max_concurent_downloads"),
        ({"config": {"image": {"max_concurrent_downloads": 0}}}, "max_concurrent_downloads"),
        ({"config": {"log": {"format": "yaml"}}}, "format"),
        ({"config": {"runtime": {"handlers": {"Bad_Name": {"path": "x"}}}}}, "Bad_Name"),
        ({"config": {"image": {"registries": {"docker.io": {"mirror_only": True}}}}}, "mirrors"),
        ({"config": {"image": {"registries": {"docker.io": {"mirrors": ["http://m:5000"]}}}}}, "mirrors"),
        ({"config": {"metrics": {"address": "localhost"}}}, "address"),
        ({"installer": {"mode": "reinstall"}}, "mode"),
        ({"replicaCount": 2}, "replicaCount"),
    ],
)
def test_schema_rejects_bad_values(chart, values, key):
    with pytest.raises(helm.HelmValuesError, match=key):
        chart.validate_schema(values)


def test_notes_tell_the_kubelet_flag_and_crictl(chart):
    notes = render(chart)["crius/templates/NOTES.txt"]
    assert "--container-runtime-endpoint=unix:///run/crius/crius.sock" in notes
    assert "crictl --runtime-endpoint unix:///run/crius/crius.sock info" in notes


def test_every_value_is_documented_and_readme_is_current():
    values_text = (CHART / "values.yaml").read_text()
    assert chart_readme.undocumented(values_text) == []
    readme = (CHART / "README.md").read_text()
    assert chart_readme.updated_readme(readme, values_text) == readme, "run `make chart-readme`"
