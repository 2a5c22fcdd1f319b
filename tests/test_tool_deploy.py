"""deploy as a user runs it: dry runs, validation of whole batches, hostile YAML,
oversized controllers and reruns of the same job, against a real Kubernetes
control plane (tests.kube.real)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.infra import wait_for
from tests.kube.emulator import KubeEmulator
from tests.kube.real import KubeNamespace
from tests.kube.toolrun import (
    DEFINITIONS,
    ROOT,
    definition_text,
    run_tool_in,
    tool_env,
)

pytest_plugins = ["tests.kube.fixtures"]

K8S_VERSION = kubernetes_validate.latest_version()
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def validate_strict(manifest: dict) -> None:
    """kubernetes-validate --strict against the newest Kubernetes schemas it ships."""
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def container_of(manifest: dict) -> dict:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def env_of(manifest: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container_of(manifest)["env"]}


def test_schemas_are_for_a_current_kubernetes() -> None:
    major, minor = (int(part) for part in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 35), f"kubernetes-validate ships only {K8S_VERSION}"


def test_dry_run_of_zookeeper_renders_a_valid_controller() -> None:
    # Acceptance 1, exactly as a person types it from the repository.
    completed = subprocess.run(
        [sys.executable, "tools/deploy.py", "--dry-run", "definitions/zookeeper.yml", "-p", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    (manifest,) = list(yaml.safe_load_all(completed.stdout))
    validate_strict(manifest)
    definition = yaml.safe_load(definition_text("zookeeper.yml"))
    assert manifest["kind"] == "ReplicationController" and manifest["apiVersion"] == "v1"
    assert manifest["spec"]["replicas"] == 3
    ports = [port["containerPort"] for port in container_of(manifest)["ports"]]
    assert sorted(ports) == [2181, 2888, 3888, 8080]
    env = env_of(manifest)
    assert json.loads(env["pod"]) == definition["settings"]
    assert env["ochopod_cluster"] == "zookeeper"
    assert env["ochopod_namespace"] == "default"
    assert env["ochopod_application"] == manifest["metadata"]["name"]
    assert container_of(manifest)["image"] == "paugamo/k8s-ec2-zookeeper"


def test_every_shipped_definition_renders_valid_manifests(job_dir: Path) -> None:
    names = sorted(path.name for path in DEFINITIONS.glob("*.yml"))
    assert {"zookeeper.yml", "redis.yml", "kafka.yml"} <= set(names)
    env = tool_env(job_dir, job_id="3f1c9d2e-5b7a-4c1e-9f00-0123456789ab")
    result = run_tool_in(job_dir, "deploy", "--dry-run", "*.yml", "-n", "staging", env=env,
                         files={name: definition_text(name) for name in names})
    assert result.code == 0, result.output
    manifests = list(yaml.safe_load_all(result.out))
    assert len(manifests) == len(names)
    for manifest in manifests:
        validate_strict(manifest)
        name = manifest["metadata"]["name"]
        assert len(name) <= 57 and re.match(DNS1123_LABEL, name)
        assert name.startswith("staging-")
        labels = manifest["metadata"]["labels"]
        assert labels["ocho.io/namespace"] == "staging"
        assert labels["ocho.io/job"] == "3f1c9d2e-5b7a-4c1e-9f00-0123456789ab"
        assert labels["ocho.io/application"] == name
        selector = manifest["spec"]["selector"]
        assert selector.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()
        assert {"ocho.io/namespace", "ocho.io/cluster", "ocho.io/application",
                "ocho.io/job"} <= selector.keys()
    kafka = next(m for m in manifests if m["metadata"]["labels"]["ocho.io/cluster"] == "kafka")
    assert kafka["spec"]["replicas"] == 3  # the definition's `pods`
    assert container_of(kafka)["resources"]["limits"]["memory"] == "2Gi"


def test_long_names_are_cut_to_a_valid_controller_name(job_dir: Path) -> None:
    cluster = "a-very-long-cluster-name-that-goes-on-and-on-and-on-for-ages"
    files = {"long.yml": f"cluster: {cluster}\nimage: busybox\n"}
    result = run_tool_in(job_dir, "deploy", "--dry-run", "long.yml", "-n",
                         "an-equally-long-namespace-name-for-good-measure", files=files,
                         env=tool_env(job_dir))
    assert result.code == 0, result.output
    (manifest,) = list(yaml.safe_load_all(result.out))
    validate_strict(manifest)
    name = manifest["metadata"]["name"]
    assert len(name) <= 57 and re.match(DNS1123_LABEL, name), name
    assert manifest["metadata"]["labels"]["ocho.io/cluster"] == cluster


def test_overrides_merge_deeply_and_per_cluster(job_dir: Path) -> None:
    overrides = ("settings:\n  tick_time: 3000\n"
                 "dev.zoo*:\n  pods: 5\n  settings: {extra: true}\n"
                 "prod.zookeeper:\n  image: not-used\n")
    result = run_tool_in(job_dir, "deploy", "--dry-run", "zookeeper.yml", "-n", "dev", "-o",
                         "overrides.yml", env=tool_env(job_dir),
                         files={"zookeeper.yml": definition_text("zookeeper.yml"),
                                "overrides.yml": overrides})
    assert result.code == 0, result.output
    (manifest,) = list(yaml.safe_load_all(result.out))
    settings = json.loads(env_of(manifest)["pod"])
    assert settings == {"tick_time": 3000, "init_limit": 10, "sync_limit": 5, "extra": True}
    assert manifest["spec"]["replicas"] == 5
    assert container_of(manifest)["image"] == "paugamo/k8s-ec2-zookeeper"


def test_a_bad_batch_creates_nothing_and_reports_every_problem(
        kube: KubeNamespace, run_tool) -> None:
    files = {
        "zookeeper.yml": definition_text("zookeeper.yml"),
        "broken.yml": ("cluster: Broken_Name\nimage: busybox\nports: [80, http, 70000]\n"
                       "verbatim: {cpu: 1}\nenv: {PORT: 8080}\n"),
        "noimage.yml": "cluster: redis\nports: [6379]\n",
    }
    result = run_tool("deploy", "zookeeper.yml", "broken.yml", "noimage.yml", files=files)
    assert result.code != 0
    for expected in ("broken.yml: cluster:", "broken.yml: ports[1]:", "broken.yml: ports[2]:",
                     "broken.yml: verbatim: unknown field", "broken.yml: env.PORT:",
                     "noimage.yml: image: required"):
        assert expected in result.err, (expected, result.err)
    assert "allowed fields are cluster, image" in result.err
    assert "0% success" in result.out
    assert "Traceback" not in result.output
    assert kube.controllers() == []


def test_a_batch_with_a_controller_over_the_limit_creates_nothing(kube: KubeNamespace,
                                                                   run_tool) -> None:
    """Each file is under the 1 MiB file cap, but -o merges them: the controller
    would be 1.2 MiB, which etcd would refuse after zookeeper was created."""
    blob = "x" * (600 * 1024)
    files = {"zookeeper.yml": definition_text("zookeeper.yml"),
             "big.yml": f"cluster: big\nimage: busybox\nsettings: {{a: {blob}}}\n",
             "big-overrides.yml": f"default.big:\n  settings: {{b: {blob}}}\n"}
    for dry_run in (["--dry-run"], []):
        result = run_tool("deploy", *dry_run, "zookeeper.yml", "big.yml", "-o",
                          "big-overrides.yml", files=files)
        assert result.code == 1, result.output
        (line,) = result.err.strip().splitlines()
        assert line.startswith("deploy: big.yml: its ReplicationController would be 12")
        assert "over deploy's limit of 1024 KiB per controller" in line
        assert "0% success / spawned 0 pod(s): 1 problem(s), nothing deployed" in result.out
    assert kube.controllers() == []
    assert kube.pods() == []
    fits = run_tool("deploy", "zookeeper.yml", "big.yml", files=files)
    assert fits.code == 0, fits.output  # 600 KiB alone is fine
    assert len(kube.controllers()) == 2


def test_bad_yaml_is_reported_with_line_and_column(job_dir: Path) -> None:
    files = {"bad.yml": "cluster: zookeeper\nimage: [unclosed\nports:\n  - 2181\n",
             "tabs.yml": "cluster: a\n\timage: b\n"}
    result = run_tool_in(job_dir, "deploy", "--dry-run", "bad.yml", "tabs.yml", files=files,
                         env=tool_env(job_dir))
    assert result.code == 1
    assert "bad.yml: line 3, column 6:" in result.err, result.err
    assert "tabs.yml: line 2, column 1:" in result.err, result.err
    assert "Traceback" not in result.output


def test_billion_laughs_fails_fast_with_a_clear_message(job_dir: Path) -> None:
    lines = ['cluster: laughs', 'image: busybox',
             'settings:', '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghij":
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    files = {"laughs.yml": "\n".join(lines) + "\n"}
    started = time.monotonic()
    result = run_tool_in(job_dir, "deploy", "--dry-run", "laughs.yml", files=files,
                         env=tool_env(job_dir))
    elapsed = time.monotonic() - started
    assert result.code == 1
    assert "laughs.yml: line" in result.err and "aliases expand to more than" in result.err
    assert elapsed < 1.0, f"took {elapsed:.2f}s"


def test_oversized_and_binary_files_are_refused(job_dir: Path) -> None:
    files = {"huge.yml": "cluster: a\nimage: b\n" + "# padding\n" * 120_000,
             "binary.yml": b"\xff\xfe\x00garbage"}
    result = run_tool_in(job_dir, "deploy", "--dry-run", "huge.yml", "binary.yml",
                         "missing.yml", "nomatch-*.yml", files=files, env=tool_env(job_dir))
    assert result.code == 1
    assert "huge.yml: is larger than 1024 KiB" in result.err
    assert "binary.yml: is not UTF-8 text" in result.err
    assert "missing.yml: no such file" in result.err
    assert "nomatch-*.yml: no file matches" in result.err


def test_same_job_twice_creates_one_controller(kube: KubeNamespace, run_tool) -> None:
    files = {"zookeeper.yml": definition_text("zookeeper.yml")}
    job = "5d1b7e9a-2c3f-4a5b-8c6d-7e8f9a0b1c2d"
    first = run_tool("deploy", "zookeeper.yml", "-p", "3", files=files, job_id=job)
    assert first.code == 0, first.output
    assert "100% success / spawned 3 pod(s)" in first.out
    again = run_tool("deploy", "zookeeper.yml", "-p", "3", files=files, job_id=job, attempt=2)
    assert again.code == 0, again.output
    assert "already deployed by this job" in again.out
    assert "100% success / spawned 3 pod(s)" in again.out
    assert len(kube.controllers(f"ocho.io/job={job}")) == 1
    other = run_tool("deploy", "zookeeper.yml", files=files)
    assert other.code == 0
    assert len(kube.controllers()) == 2  # another job deploys anew
    kube.wait_for_pods(3, f"ocho.io/job={job}")


def test_deploy_json_output(kube: KubeNamespace, run_tool) -> None:
    result = run_tool("deploy", "-j", "redis.yml", files={"redis.yml": definition_text(
        "redis.yml")})
    assert result.code == 0, result.output
    report = json.loads(result.out)
    assert report["ok"] is True and report["success"] == 100 and report["pods"] == 1
    (outcome,) = report["definitions"]
    assert outcome["state"] == "created" and outcome["cluster"] == "redis"
    assert report["k8s_namespace"] == kube.name
    (rc,) = kube.controllers()
    assert rc["metadata"]["name"] == outcome["controller"]
    # What the server stored is what deploy built, with the server's defaults added.
    (container,) = rc["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7.2" and container["imagePullPolicy"] == "IfNotPresent"
    assert rc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ocho-portal"


@pytest.mark.parametrize("argv", [["--help"], ["--dry-run", "zookeeper.yml"]])
def test_help_and_dry_run_do_not_import_the_kubernetes_client(job_dir: Path,
                                                              argv: list[str]) -> None:
    (job_dir / "zookeeper.yml").write_text(definition_text("zookeeper.yml"))
    (job_dir / "deploy.py").write_text((ROOT / "tools" / "deploy.py").read_text())
    completed = subprocess.run([sys.executable, "-X", "importtime", "deploy.py", *argv],
                               cwd=job_dir, env=tool_env(job_dir), capture_output=True,
                               text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines()
                if line.startswith("import time:")}
    assert "yaml" in imported  # the check sees imports at all
    assert not {name for name in imported if name.split(".")[0] in ("kubernetes", "urllib3")}


def test_other_tools_help_does_not_import_the_client(job_dir: Path) -> None:
    for name in ("ls", "grep", "info", "log", "kill", "scale"):
        completed = subprocess.run([sys.executable, "-X", "importtime",
                                    str(ROOT / "tools" / f"{name}.py"), "--help"],
                                   cwd=job_dir, env=tool_env(job_dir), capture_output=True,
                                   text=True, timeout=60, check=False)
        assert completed.returncode == 0, (name, completed.stderr[-2000:])
        assert "usage:" in completed.stdout
        assert "kubernetes" not in completed.stderr, name


def test_uploaded_files_never_shadow_modules(job_dir: Path) -> None:
    """The job dir holds user uploads; an uploaded yaml.py must not run as code."""
    files = {"yaml.py": "raise SystemExit('hijacked')\n",
             "ocho.py": "raise SystemExit('hijacked')\n",
             "zookeeper.yml": definition_text("zookeeper.yml")}
    result = run_tool_in(job_dir, "deploy", "--dry-run", "zookeeper.yml", files=files,
                         env=tool_env(job_dir))
    assert result.code == 0, result.output
    assert "hijacked" not in result.output


def test_wait_watches_until_every_pod_is_ready(kube_emulator: KubeEmulator, run_emulated,
                                               job_dir: Path) -> None:
    """Emulator: pods become running and ready only where a kubelet runs them."""
    run_tool = run_emulated
    files = {"zookeeper.yml": definition_text("zookeeper.yml"),
             "redis.yml": definition_text("redis.yml")}
    kube_emulator.hold_images("redis:7.2")
    result = run_tool("deploy", "zookeeper.yml", "redis.yml", "-p", "2", "--wait", "1",
                      files=files)
    assert result.code == 1
    assert "zookeeper.yml: deployed default.zookeeper" in result.out and "2 ready" in result.out
    (line,) = result.err.strip().splitlines()
    assert "redis.yml:" in line and "only 0/2 pod(s) running and ready after 1s" in line
    assert "50% success / spawned 4 pod(s)" in result.out

    # A deploy that waits returns once the pods come up, not at its deadline.
    env = tool_env(job_dir, kube_emulator)
    process = subprocess.Popen([sys.executable, "deploy.py", "redis.yml", "-n", "other",
                                "--wait", "30"], cwd=job_dir, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: len(kube_emulator.pods(selector="ocho.io/namespace=other")) == 1,
             what="the pending pod")
    time.sleep(0.3)
    assert process.poll() is None  # still waiting
    started = time.monotonic()
    kube_emulator.release_images("redis:7.2")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, out + err
    assert time.monotonic() - started < 5
    assert "(1 pod(s), 1 ready)" in out
    assert any("watch=true" in line for line in kube_emulator.requests)  # no polling
