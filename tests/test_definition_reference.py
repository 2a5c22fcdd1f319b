"""The definition validator (checked by hand, for deploy's start-up time) answers as a
reference schema of the same rules does (tests/definition_reference.py), on generated
definitions valid and invalid: the same accept/reject, and the same fields named."""

from __future__ import annotations

import datetime
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocho.kube.definition import FIELDS, DefinitionError, validate
from tests.definition_reference import fields_in_error

SOURCE = "def.yml"
EXAMPLES = 500  # about 8 s here; the one-off comparison before this test used 4000
# Text as YAML may give it; no newline: see test_a_trailing_newline_… below.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12)
NAMEISH = st.from_regex(r"[a-z0-9][-a-z0-9.]{0,8}[a-z0-9]", fullmatch=True)
WRONG_TYPES = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000),
                        st.floats(allow_nan=True), st.lists(st.integers(0, 3), max_size=2),
                        st.dictionaries(st.just("k"), st.integers(0, 1), max_size=1))


Strategy = st.SearchStrategy[Any]


def either(valid: Strategy, *invalid: Strategy) -> Strategy:
    """The valid strategy about four times in five, else one of the (mostly) invalid ones.
    (one_of alone picks its branches evenly, so most definitions would be refused.)"""
    others = st.one_of(*invalid)
    return st.integers(0, 9).flatmap(lambda draw: valid if draw < 8 else others)


CLUSTER = either(NAMEISH.filter(lambda s: "." not in s),
                 st.from_regex(r"[a-z0-9-]{0,70}", fullmatch=True), TEXT, WRONG_TYPES)
IMAGE = either(st.sampled_from(["redis:7", "paugamo/k8s-ec2-zookeeper", "a.b/c@sha256:x"]),
               TEXT, WRONG_TYPES)
PORT = st.one_of(st.integers(1, 65535), st.integers(-2, 70000), st.booleans(),
                 st.floats(0, 9), st.just("80"))
PORTS = either(st.lists(st.integers(1, 65535), max_size=4, unique=True),
               st.lists(st.integers(1, 9), min_size=2, max_size=4),  # duplicates, likely
               st.lists(PORT, max_size=4), WRONG_TYPES)

GOOD_QUANTITY = st.one_of(
    st.from_regex(r"(\d{1,4}(\.\d{0,2})?|\.\d{1,2})(Ki|Mi|Gi|[numkMG]|e[+-]?\d)?",
                  fullmatch=True),
    st.integers(0, 5000), st.floats(0, 100))
QUANTITY = either(GOOD_QUANTITY, st.integers(-5, -1),
                  st.floats(allow_nan=True, allow_infinity=True), TEXT, st.booleans(),
                  st.none())


def resource_lists(quantity: Strategy) -> Strategy:
    return st.fixed_dictionaries({}, optional={"cpu": quantity, "memory": quantity})


RESOURCE_LIST = either(resource_lists(GOOD_QUANTITY), resource_lists(QUANTITY),
                       st.dictionaries(st.sampled_from(["cpu", "gpu"]), QUANTITY, max_size=2),
                       WRONG_TYPES)
RESOURCES = either(st.fixed_dictionaries({}, optional={"requests": RESOURCE_LIST,
                                                       "limits": RESOURCE_LIST}),
                   st.dictionaries(st.sampled_from(["requests", "limits", "extra"]),
                                   RESOURCE_LIST, max_size=2), WRONG_TYPES)


def json_data(leaf: Strategy, key: Strategy) -> Strategy:
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(key, inner, max_size=3)), max_leaves=6)


GOOD_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), TEXT, st.floats(allow_nan=False,
                      allow_infinity=False), st.dates(min_value=datetime.date(2000, 1, 1)))
BAD_LEAF = st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: f != f
                                                                           or abs(f) == f + 1),
                     st.binary(max_size=2), st.frozensets(st.integers(0, 2), max_size=1))
SETTINGS = either(st.dictionaries(TEXT, json_data(GOOD_LEAF, TEXT), max_size=3),
                  st.none(),
                  st.dictionaries(TEXT, json_data(st.one_of(GOOD_LEAF, BAD_LEAF),
                                                  st.one_of(TEXT, st.integers(0, 2))),
                                  max_size=3), WRONG_TYPES)
PODS = either(st.integers(0, 10), st.integers(-5, -1), st.booleans(), st.floats(0, 3),
              st.just("3"))

GOOD_ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True).filter(
    lambda name: name not in ("pod", "ochopod_cluster", "ochopod_namespace",
                              "ochopod_application"))
ENV_NAME = st.one_of(GOOD_ENV_NAME, st.sampled_from(["pod", "ochopod_cluster", "1ABC", "A B",
                                                     ""]), TEXT, st.integers(0, 3))
ENV = either(st.dictionaries(GOOD_ENV_NAME, TEXT, max_size=3),
             st.dictionaries(ENV_NAME, st.one_of(TEXT, st.integers(0, 3), st.none()),
                             max_size=3), WRONG_TYPES)
STRINGS = either(st.lists(TEXT, max_size=3), st.lists(st.one_of(TEXT, WRONG_TYPES), max_size=3),
                 WRONG_TYPES)

GOOD_LABEL_KEY = st.from_regex(r"([a-z0-9]{1,5}(\.[a-z0-9]{1,5})?/)?[A-Za-z0-9]"
                               r"([-A-Za-z0-9_.]{0,6}[A-Za-z0-9])?", fullmatch=True).filter(
    lambda key: not key.startswith("ocho.io/"))
GOOD_LABEL_VALUE = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,6}[A-Za-z0-9])?)?",
                                 fullmatch=True)
LABEL_KEY = st.one_of(GOOD_LABEL_KEY, st.sampled_from([
    "ocho.io/job", "app.kubernetes.io/managed-by", "/x", "a/", "Bad_/x", "x" * 64, "a/b/c"]),
    TEXT, st.integers(0, 3))
LABEL_VALUE = st.one_of(GOOD_LABEL_VALUE, st.sampled_from(["-x", "x-", "y" * 64, "a b"]), TEXT,
                        st.integers(0, 3), st.none())
LABELS = either(st.dictionaries(GOOD_LABEL_KEY, GOOD_LABEL_VALUE, max_size=3),
                st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=3), WRONG_TYPES)
UNKNOWN = st.dictionaries(st.sampled_from(["name", "replicas", "Image"]), st.integers(0, 1),
                          max_size=1)

DEFINITIONS = st.builds(
    lambda required, known, unknown: {**required, **known, **unknown},
    # Without cluster and image every definition is refused for those alone.
    either(st.just({"cluster": "zookeeper", "image": "redis:7"}), st.just({})),
    st.fixed_dictionaries({}, optional={
        "cluster": CLUSTER, "image": IMAGE, "ports": PORTS, "settings": SETTINGS, "pods": PODS,
        "env": ENV, "resources": RESOURCES, "command": STRINGS, "args": STRINGS,
        "labels": LABELS}),
    st.one_of(st.just({}), st.just({}), st.just({}), UNKNOWN),
)


def fields_named(data: Any) -> set[str] | None:
    """None if the validator accepts `data`, else the top-level fields its problems name."""
    try:
        validate(data, SOURCE)
    except DefinitionError as exc:
        return {re.match(r"[^.\[:]*", problem.removeprefix(f"{SOURCE}: ")).group(0)  # type: ignore[union-attr]
                for problem in exc.problems}
    return None


def test_the_validator_answers_as_the_reference_schema() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(DEFINITIONS)
    def same_answer(data: dict[str, Any]) -> None:
        ours, reference = fields_named(data), fields_in_error(data)
        seen["accepted" if ours is None else "refused"] += 1
        assert ours == reference, data

    same_answer()
    # The generator must reach both answers often for the comparison to mean anything.
    assert min(seen["accepted"], seen["refused"]) >= EXAMPLES // 10, seen


def test_every_field_of_the_validator_is_in_the_reference() -> None:
    from tests.definition_reference import DefinitionSchema

    assert set(DefinitionSchema().fields) == set(FIELDS)


@pytest.mark.parametrize("data", [
    {"cluster": "zookeeper\n", "image": "redis:7"},
    {"cluster": "zookeeper", "image": "redis:7", "labels": {"team": "data\n"}},
    {"cluster": "zookeeper", "image": "redis:7", "env": {"A\n": "x"}},
    {"cluster": "zookeeper", "image": "redis:7", "resources": {"limits": {"cpu": "1\n"}}},
])
def test_a_trailing_newline_is_refused_like_the_reference(data: dict[str, Any]) -> None:
    assert fields_named(data) == fields_in_error(data) != None  # noqa: E711
