"""The pieces the tools share, without a process or a server: definitions, safe
YAML, names, cluster patterns, scale factors, error messages."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from ocho.errors import OchoError
from ocho.kube import safeyaml
from ocho.kube.clusters import Controller
from ocho.kube.config import ToolEnvironment
from ocho.kube.definition import (
    DefinitionError,
    Overrides,
    deep_merge,
    quantity_value,
    validate,
)
from ocho.kube.errors import KubeError, api_failure
from ocho.kube.manifest import (
    MAX_CONTROLLER_BYTES,
    build_controller,
    serialized_size,
    size_problem,
)
from ocho.kube.names import controller_name, discriminator
from ocho.kube.output import age, table
from ocho.kube.patterns import ClusterPattern, common_selector, parse_patterns
from ocho.kube.scaling import ScaleFactor, spread

WHEN = datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC)


def problems_of(data: Any) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        validate(data, "x.yml")
    return caught.value.problems


# -- definitions ----------------------------------------------------------------------------

def test_the_original_zookeeper_definition_with_empty_settings() -> None:
    definition = validate(safeyaml.loads(
        "cluster:  zookeeper\nimage:    paugamo/k8s-ec2-zookeeper\nsettings:\n"
        "ports:\n    - 2181\n    - 2888\n    - 3888\n"), "zookeeper.yml")
    assert definition.settings == {} and definition.ports == (2181, 2888, 3888)
    assert definition.pods is None


@pytest.mark.parametrize(("data", "expected"), [
    ({"image": "x"}, "x.yml: cluster: required"),
    ({"cluster": "x"}, "x.yml: image: required"),
    ({"cluster": "-bad", "image": "x"}, "x.yml: cluster: '-bad' must be a DNS-1123 label"),
    ({"cluster": "a" * 64, "image": "x"}, "must be a DNS-1123 label"),
    ({"cluster": "x", "image": "has space"}, "x.yml: image: 'has space' is not an image name"),
    ({"cluster": "x", "image": "y", "ports": "80"}, "x.yml: ports: must be a list of port"),
    ({"cluster": "x", "image": "y", "ports": [80, 80]}, "port(s) 80 listed more than once"),
    ({"cluster": "x", "image": "y", "ports": [1.5]}, "x.yml: ports[0]: must be a TCP port"),
    ({"cluster": "x", "image": "y", "pods": "3"}, "x.yml: pods: must be a pod count"),
    ({"cluster": "x", "image": "y", "env": {"A": True}}, "x.yml: env.A: must be a string"),
    ({"cluster": "x", "image": "y", "env": {"ochopod_cluster": "z"}}, "is set by deploy"),
    ({"cluster": "x", "image": "y", "labels": {"ocho.io/job": "z"}}, "prefix is reserved"),
    ({"cluster": "x", "image": "y", "labels": {"a": "b c"}}, "value 'b c' of 'a'"),
    ({"cluster": "x", "image": "y", "resources": {"limits": {"cpu": "-1"}}},
     "resources.limits.cpu: must be a quantity"),
    ({"cluster": "x", "image": "y", "resources": {"requests": {"cpu": "2"},
                                                  "limits": {"cpu": "500m"}}},
     "resources.requests.cpu: 2 is above limits.cpu (500m)"),
    ({"cluster": "x", "image": "y", "command": ["a", 1]}, "x.yml: command[1]: must be a string"),
    ({"cluster": "x", "image": "y", "settings": {"when": {True: 1}}},
     "x.yml: settings: when: key True must be a string"),
    ({"cluster": "x", "image": "y", "settings": {"a": b"bytes"}}, "cannot be sent as JSON"),
    ({"cluster": "x", "image": "y", "debug": True}, "x.yml: debug: unknown field; allowed"),
    ({"cluster": "x", "image": "y", "ports": None}, "x.yml: ports: is empty (null)"),
    ({"cluster": "x", "image": "y", "resources": ["cpu"]},
     "x.yml: resources: must be a mapping with requests, limits, got a list"),
    ({"cluster": "x", "image": "y", "resources": {"limits": {"gpu": 1}}},
     "x.yml: resources.limits.gpu: unknown field; allowed fields are cpu, memory"),
    ({"cluster": "x", "image": "y", "labels": {"a": 1, "b": "c d"}}, "value 'c d' of 'b'"),
    ([1, 2], "x.yml: must be a mapping of fields"),
    (None, "x.yml: is empty"),
])
def test_each_problem_names_the_file_and_field(data: Any, expected: str) -> None:
    assert any(expected in problem for problem in problems_of(data)), problems_of(data)


def test_every_problem_of_a_definition_is_reported_at_once() -> None:
    problems = problems_of({"cluster": "Bad", "ports": [0], "extra": 1})
    assert len(problems) == 4  # cluster, image, ports[0], extra


def test_checking_a_definition_imports_no_schema_library() -> None:
    # deploy starts once per job: marshmallow alone cost it half its start-up.
    probe = ("import sys, ocho.kube.definition as d; d.validate({'cluster': 'a', 'image': 'b'},"
             " 'a.yml'); print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('marshmallow', 'kubernetes', 'pydantic')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_settings_keep_nested_data_and_dates_become_text() -> None:
    definition = validate(safeyaml.loads(
        "cluster: a\nimage: b\nsettings:\n  since: 2024-01-02\n  nested: {list: [1, {x: y}]}\n"),
        "a.yml")
    assert definition.settings == {"since": "2024-01-02", "nested": {"list": [1, {"x": "y"}]}}


def test_quantities_compare_across_units() -> None:
    assert quantity_value("500m") < quantity_value("1") == quantity_value("1000m")
    assert quantity_value("1Gi") > quantity_value("1G") > quantity_value("512Mi")
    assert quantity_value("1e3") == quantity_value("1k")


def test_overrides_merge_deeply_and_scoped_keys_apply_to_matching_clusters() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": 3}, "l": [2]}) == {
        "a": {"b": 3, "c": 2}, "l": [2]}
    overrides = Overrides(common={"settings": {"debug": False}},
                          scoped=((ClusterPattern.parse("dev.web*"),
                                   {"settings": {"debug": True}}),))
    base = {"cluster": "web-server", "image": "x", "settings": {"port": 1}}
    assert overrides.apply(base, "dev")["settings"] == {"port": 1, "debug": True}
    assert overrides.apply(base, "prod")["settings"] == {"port": 1, "debug": False}
    assert base["settings"] == {"port": 1}  # the definition itself is untouched


# -- safe YAML ------------------------------------------------------------------------------

def test_yaml_errors_carry_line_and_column() -> None:
    with pytest.raises(safeyaml.YamlProblem) as caught:
        safeyaml.loads("a: 1\nb: [2\nc: 3\n")
    assert caught.value.line is not None and caught.value.column is not None
    assert str(caught.value).startswith(f"line {caught.value.line}, column")


@pytest.mark.parametrize(("text", "expected"), [
    ("a: 1\na: 2\n", "found duplicate key 'a'"),
    ("a: &x [*x]\n", "recursive data"),
    ("a: !!python/object:os.system {}\n", "could not determine a constructor"),
    ("[" * 100 + "]" * 100, "nested more than 64 levels"),
    ("---\na: 1\n---\nb: 2\n", "expected a single document"),
])
def test_yaml_that_is_refused(text: str, expected: str) -> None:
    with pytest.raises(safeyaml.YamlProblem) as caught:
        safeyaml.loads(text)
    assert expected in str(caught.value)


def test_billion_laughs_is_refused_while_composing() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefghi", "bcdefghij", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    started = time.perf_counter()
    with pytest.raises(safeyaml.YamlProblem) as caught:
        safeyaml.loads("\n".join(lines))
    assert time.perf_counter() - started < 0.5
    assert "aliases expand to more than" in str(caught.value)


def test_a_few_aliases_are_fine() -> None:
    data = safeyaml.loads("base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\nagain: *b\n")
    assert data == {"base": {"x": 1}, "use": {"x": 1, "y": 2}, "again": {"x": 1}}


# -- names, patterns, scaling ---------------------------------------------------------------

@pytest.mark.parametrize(("namespace", "cluster"), [
    ("default", "zookeeper"),
    ("n" * 63, "c" * 63),
    ("a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t", "x-y-z-x-y-z-x-y-z-x-y"),
])
def test_controller_names_are_short_valid_labels(namespace: str, cluster: str) -> None:
    name = controller_name(namespace, cluster, WHEN, discriminator("job"))
    assert len(name) <= 57
    assert re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name), name
    assert name.endswith("-20240501-123045-" + discriminator("job"))


def test_long_names_that_share_a_prefix_stay_apart() -> None:
    one = controller_name("n" * 40, "cluster-one", WHEN, "abcd")
    two = controller_name("n" * 40, "cluster-two", WHEN, "abcd")
    assert one != two


def test_a_discriminator_is_stable_per_job() -> None:
    assert discriminator("job-1") == discriminator("job-1") != discriminator("job-2")
    assert re.match(r"^[0-9a-f]{4}$", discriminator(None))


def test_manifest_labels_and_selector() -> None:
    definition = validate({"cluster": "zk", "image": "i", "ports": [8080],
                           "labels": {"team": "t"}}, "zk.yml")
    manifest = build_controller(definition, namespace="dev", pods=2, job_id="job", when=WHEN)
    labels = manifest["metadata"]["labels"]
    assert labels["team"] == "t" and labels["ocho.io/job"] == "job"
    assert manifest["spec"]["selector"] == {
        "ocho.io/namespace": "dev", "ocho.io/cluster": "zk",
        "ocho.io/application": manifest["metadata"]["name"], "ocho.io/job": "job"}
    ports = manifest["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [port["containerPort"] for port in ports] == [8080]  # 8080 is not added twice
    without_job = build_controller(definition, namespace="dev", pods=1, job_id=None, when=WHEN)
    assert "ocho.io/job" not in without_job["spec"]["selector"]


@pytest.mark.parametrize(("text", "namespace", "cluster", "matches", "misses"), [
    ("zoo*", "*", "zoo*", [("default", "zookeeper"), ("dev", "zoo")], [("dev", "kafka")]),
    ("*.kafka", "*", "kafka", [("dev", "kafka")], [("dev", "kafka2")]),
    ("dev.*", "dev", "*", [("dev", "x")], [("prod", "x")]),
    ("default.zookeeper", "default", "zookeeper", [("default", "zookeeper")],
     [("dev", "zookeeper")]),
])
def test_cluster_patterns(text: str, namespace: str, cluster: str,
                          matches: list[tuple[str, str]], misses: list[tuple[str, str]]) -> None:
    pattern = ClusterPattern.parse(text)
    assert (pattern.namespace, pattern.cluster) == (namespace, cluster)
    assert all(pattern.matches(*pair) for pair in matches)
    assert not any(pattern.matches(*pair) for pair in misses)


def test_patterns_narrow_the_server_side_selector() -> None:
    assert ClusterPattern.parse("default.zookeeper").label_selector() == (
        "ocho.io/cluster=zookeeper,ocho.io/namespace=default")
    assert ClusterPattern.parse("zoo*").label_selector() == "ocho.io/cluster"
    assert common_selector(parse_patterns(["a", "b"])) == "ocho.io/cluster"
    with pytest.raises(OchoError):
        ClusterPattern.parse("a.b.c")
    with pytest.raises(OchoError):
        ClusterPattern.parse(".b")


@pytest.mark.parametrize(("text", "current", "expected"), [
    ("@5", 3, 5), ("@0", 3, 0), ("x0.5", 3, 2), ("x0.5", 5, 3), ("x2", 3, 6), ("*1.5", 2, 3),
    ("+1", 3, 4), ("-2", 3, 1), ("-10", 3, 0),
])
def test_scale_factors(text: str, current: int, expected: int) -> None:
    assert ScaleFactor.parse(text).apply(current) == expected


@pytest.mark.parametrize("text", ["5", "x", "@-1", "x-2", "++1", "half", "x1e9"])
def test_bad_scale_factors(text: str) -> None:
    with pytest.raises(OchoError):
        ScaleFactor.parse(text).apply(10**9)


def test_spread_grows_the_newest_and_shrinks_the_oldest() -> None:
    assert spread([2, 1], 6) == [2, 4]
    assert spread([2, 3], 2) == [0, 2]
    assert spread([2, 3], 0) == [0, 0]
    assert spread([], 4) == []


# -- errors, environment, output ----------------------------------------------------------

class FakeApiException(Exception):
    def __init__(self, status: int, body: str, reason: str = "") -> None:
        super().__init__(reason)
        self.status, self.body, self.reason = status, body, reason


def test_api_failures_become_one_line() -> None:
    body = ('{"kind":"Status","apiVersion":"v1","status":"Failure","message":"RC \\"x\\" is '
            'invalid","reason":"Invalid","code":422,"details":{"causes":[{"field":"spec.replicas",'
            '"message":"Invalid value: -1:\\nmust be >= 0"}]}}')
    error = api_failure(FakeApiException(422, body), "scale x")
    assert str(error) == ('could not scale x: 422 invalid: RC "x" is invalid '
                          "(spec.replicas: Invalid value: -1: must be >= 0)")
    assert error.status == 422 and not error.fatal
    plain = api_failure(FakeApiException(502, "<html>bad gateway</html>", "Bad Gateway"), "list")
    assert str(plain) == "could not list: 502 Bad Gateway: Bad Gateway"
    tls = api_failure(FakeApiException(0, "", "SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED]"), "ls")
    assert "OCHO_K8S_CA_FILE" in str(tls) and "\n" not in str(tls)


def test_environment_is_parsed_once_and_hides_the_token() -> None:
    env = ToolEnvironment.from_environ({
        "OCHO_JOB_ID": "3f1c9d2e-5b7a-4c1e-9f00-0123456789ab", "OCHO_ATTEMPT": "2",
        "OCHO_K8S_HOST": "k8s.example:6443", "OCHO_K8S_TOKEN": "t0ps3cret",
        "OCHO_K8S_INSECURE": "1", "OCHO_K8S_NAMESPACE": "team"})
    assert env.k8s_host == "https://k8s.example:6443" and env.attempt == 2
    assert env.k8s_insecure and env.k8s_namespace == "team"
    assert "t0ps3cret" not in repr(env)
    with pytest.raises(KubeError):
        ToolEnvironment.from_environ({"OCHO_JOB_ID": "not a label value!"})
    with pytest.raises(KubeError):
        ToolEnvironment.from_environ({"OCHO_K8S_INSECURE": "maybe"})


def test_tables_align_and_ages_read_like_kubectl() -> None:
    text = table(("A", "LONGER", "C"), [("xx", "y", "z"), ("x", "yyyyyyy", "")])
    lines = text.splitlines()
    assert [line.index(cell) for line, cell in zip(lines, ("LONGER", "y", "yyyyyyy"),
                                                   strict=True)] == [4, 4, 4]
    now = datetime(2024, 5, 2, tzinfo=UTC)
    assert age(datetime(2024, 5, 1, 23, 59, 15, tzinfo=UTC), now) == "45s"
    assert age(datetime(2024, 5, 1, 21, tzinfo=UTC), now) == "3h"
    assert age(datetime(2024, 4, 29, tzinfo=UTC), now) == "3d"
    assert age(None) == "-"


def test_two_deploys_within_one_second_keep_their_order() -> None:
    def rc(name: str, deployed: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "creationTimestamp": "2026-01-01T10:00:00Z",
                             "labels": {"ocho.io/namespace": "ns", "ocho.io/cluster": "zk"},
                             "annotations": {"ocho.io/deployed-at": deployed}}}

    # Names sort the other way round: only the deploy time can tell which came last.
    first = Controller.from_json(rc("ns-zk-b", "2026-01-01T10:00:00.100000+00:00"))
    second = Controller.from_json(rc("ns-zk-a", "2026-01-01T10:00:00.900000+00:00"))
    assert first.created is not None and second.created is not None
    assert first.created < second.created
    manifest = build_controller(validate({"cluster": "zk", "image": "i"}, "zk.yml"),
                                namespace="ns", pods=1,
                                job_id=None, when=datetime(2026, 1, 1, 10, 0, 0, 123456, UTC))
    assert manifest["metadata"]["annotations"]["ocho.io/deployed-at"] == (
        "2026-01-01T10:00:00.123456+00:00")


def test_a_namespace_being_deleted_is_named_without_the_rbac_hint() -> None:
    body = ('{"kind":"Status","apiVersion":"v1","status":"Failure","message":"replication'
            'controllers \\"z\\" is forbidden: unable to create new content in namespace t-1 '
            'because it is being terminated","reason":"Forbidden","details":{"name":"z","kind":'
            '"replicationcontrollers","causes":[{"reason":"NamespaceTerminating","message":'
            '"namespace t-1 is being terminated","field":"metadata.namespace"}]},"code":403}')
    error = api_failure(FakeApiException(403, body), "create z")
    assert "the Kubernetes namespace 't-1' is being deleted (terminating)" in str(error)
    assert "RBAC" not in str(error) and error.reason == "NamespaceTerminating"
    rbac = api_failure(FakeApiException(403, body.replace("NamespaceTerminating", "x").replace(
        "because it is being terminated", "")), "create z")
    assert "RBAC" in str(rbac)


def test_a_controller_over_the_size_limit_is_refused_before_sending() -> None:
    definition = validate({"cluster": "big", "image": "busybox",
                           "settings": {"blob": "x" * MAX_CONTROLLER_BYTES}}, "big.yml")
    manifest = build_controller(definition, namespace="default", pods=1, job_id=None, when=WHEN)
    assert serialized_size(manifest) > MAX_CONTROLLER_BYTES
    problem = size_problem(manifest)
    assert problem is not None and "over deploy's limit of 1024 KiB" in problem
    small = build_controller(validate({"cluster": "a", "image": "b"}, "a.yml"),
                             namespace="default", pods=1, job_id=None, when=WHEN)
    assert size_problem(small) is None


@pytest.fixture
def service_account(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A pod's mounted service account, as the kubelet would mount it."""
    from ocho.kube import api, config

    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("pod-token")
    (directory / "namespace").write_text("ocho")
    monkeypatch.setattr(config, "SERVICE_ACCOUNT_DIR", directory)
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_DIR", directory)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    return directory


def test_credentials_follow_kubectls_order(service_account, tmp_path) -> None:
    from ocho.kube.api import connect

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://from-kubeconfig:6443'}}]\n"
        "users: [{name: u, user: {token: kc-token}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: team}}]\n")
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    explicit = connect(ToolEnvironment.from_environ(
        {**pod, "KUBECONFIG": str(kubeconfig), "OCHO_K8S_HOST": "https://explicit:6443"}))
    assert (explicit.host, explicit.namespace) == ("https://explicit:6443", "default")
    from_file = connect(ToolEnvironment.from_environ({**pod, "KUBECONFIG": str(kubeconfig)}))
    assert (from_file.host, from_file.namespace) == ("https://from-kubeconfig:6443", "team")
    in_cluster = connect(ToolEnvironment.from_environ(pod))
    assert (in_cluster.host, in_cluster.namespace) == ("https://10.0.0.1:443", "ocho")
    assert in_cluster.api_client.configuration.api_key["BearerToken"] == "pod-token"
