"""Policies: bundled files, round trips, digests, every kind of error, and fuzzing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from personal.errors import ConfigError, PersonalError, PolicyError
from personal.policy import (
    BUNDLED_DIR,
    LoRAPolicy,
    Policy,
    PrivacyPolicy,
    bundled_policies,
    load_policy,
    policy_keys,
)

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("default", "research", "strict")

#: A valid value different from the default's, for every key (the digest must notice each).
OTHER = {
    "name": "other",
    "description": "another description",
    "privacy.unit": "session",
    "privacy.lifetime_epsilon": 4.0,
    "privacy.delta": 1e-7,
    "privacy.round_epsilon": 0.25,
    "privacy.noise_multiplier": 1.5,
    "privacy.clip_norm": 2.0,
    "privacy.accountant": "prv",
    "privacy.filter": "gaussian",
    "privacy.clip": "quantile",
    "privacy.target_quantile": 0.75,
    "privacy.clip_learning_rate": 0.5,
    "privacy.clip_count_noise": 0.1,
    "training.min_new_units": 8,
    "training.max_rounds_per_day": 3,
    "training.steps": 7,
    "training.learning_rate": 0.01,
    "training.optimizer": "adam",
    "training.expected_batch_size": 12.5,
    "training.max_tokens": 128,
    "training.examples_per_unit": 1,
    "training.warm_start": "none",
    "training.update": "bank",
    "gates.personal_check": "off",
    "training.step_guard": "off",
    "training.lora.rank": 4,
    "training.lora.scale": 2.0,
    "training.lora.dropout": 0.1,
    "training.lora.targets": ["self_attn.q_proj"],
    "training.lora.num_layers": 3,
    "continual.replay_share": 0.1,
    "continual.buffer_capacity": 64,
    "continual.public_replay_share": 0.5,
    "continual.public_distill_weight": 10.0,
    "continual.public_batch_size": 64,
    "continual.ewc_lambda": 0.0,
    "continual.fisher_source": "public",
    "gates.max_general_regression": 0.05,
    "gates.general_reference": "active",
    "gates.min_personal_gain": 0.02,
    "gates.validation_noise_multiplier": 8.0,
    "gates.validation_epsilon": 0.5,
    "retention.days": 30,
    "retention.epoch_days": 7,
    "migration.strategy": "both",
    "migration.distill_steps": 10,
    "migration.distill_learning_rate": 0.01,
    "migration.retrain_budget_share": 0.5,
    "store.synchronous": "NORMAL",
}

#: For every key: (a value of the wrong type, a value of the right type out of range).
BAD = {
    "name": (5, "no spaces allowed"),
    "description": (["x"], "x" * 2001),
    "privacy.unit": (1, "week"),
    "privacy.lifetime_epsilon": ("8", 0.01),
    "privacy.delta": (True, 0.5),
    "privacy.round_epsilon": ("0.5", 0.0),
    "privacy.noise_multiplier": ([1.0], 0.01),
    "privacy.clip_norm": ({"a": 1}, -1.0),
    "privacy.accountant": (None, "gdp"),
    "privacy.filter": ("rdp", "Gaussian"),
    "privacy.clip": (1, "adaptive"),
    "privacy.target_quantile": ("0.5", 1.0),
    "privacy.clip_learning_rate": ([0.2], 0.0),
    "privacy.clip_count_noise": (True, 1.5),
    "training.min_new_units": (3.0, 0),
    "training.max_rounds_per_day": (True, 1441),
    "training.steps": ("50", 10**9),
    "training.learning_rate": ("fast", math.inf),
    "training.optimizer": (2, "adagrad"),
    "training.expected_batch_size": ("16", 0.5),
    "training.max_tokens": (128.0, 4),
    "training.examples_per_unit": (False, 0),
    "training.warm_start": (True, "public"),
    "training.update": (True, "adapter"),
    "gates.personal_check": (True, "none"),
    "training.step_guard": (False, "gate"),
    "training.lora.rank": (8.5, 0),
    "training.lora.scale": ("20", 0),
    "training.lora.dropout": (None, 1.0),
    "training.lora.targets": (5, ["self_attn.q_proj", "self_attn.q_proj"]),
    "training.lora.num_layers": (2.0, 0),
    "continual.replay_share": ("1/4", -0.1),
    "continual.buffer_capacity": (1e3, -1),
    "continual.public_replay_share": (True, 1.0),
    "continual.public_distill_weight": ("10", 1e5),
    "continual.public_batch_size": (8.0, 257),
    "continual.ewc_lambda": ("10", math.nan),
    "continual.fisher_source": (0, "private"),
    "gates.max_general_regression": ("1%", 2.0),
    "gates.general_reference": (1, "previous"),
    "gates.min_personal_gain": ([], -2.0),
    "gates.validation_noise_multiplier": ("10", 0.0),
    "gates.validation_epsilon": (True, 101.0),
    "retention.days": (365.0, 0),
    "retention.epoch_days": ("30", 4000),
    "migration.strategy": (1, "keep"),
    "migration.distill_steps": (200.5, 0),
    "migration.distill_learning_rate": (0.0, 2.0),
    "migration.retrain_budget_share": ("all", 1.5),
    "store.synchronous": (True, "full"),
}


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *tables, key = dotted.split(".")
    for table in tables:
        data = data.setdefault(table, {})
    data[key] = value
    return data


def _base() -> dict[str, Any]:
    return Policy().to_dict()


def _with(dotted: str, value: Any) -> dict[str, Any]:
    data = _base()
    section = _set(data, dotted, value)
    # keep the one-of pairs exclusive, so the error is about the value itself
    pairs = {"round_epsilon": "noise_multiplier", "noise_multiplier": "round_epsilon"}
    pairs |= {"validation_epsilon": "validation_noise_multiplier"}
    pairs |= {"validation_noise_multiplier": "validation_epsilon"}
    if dotted.rpartition(".")[2] in pairs:
        section.pop(pairs[dotted.rpartition(".")[2]], None)
    if dotted == "training.update" and value == "bank":  # what a bank policy needs besides
        _set(data, "training.warm_start", "none")
        _set(data, "continual.ewc_lambda", 0.0)
    return data


def _error(data: Any) -> str:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(data)
    return str(info.value)


# --- bundled policies --------------------------------------------------------------------------


def test_bundled_names_and_files():
    bundled = bundled_policies()
    assert tuple(bundled) == NAMES
    for name, path in bundled.items():
        assert path.parent == BUNDLED_DIR and path.name == f"{name}.toml"


@pytest.mark.parametrize("name", NAMES)
def test_each_bundled_policy_loads(name):
    policy = load_policy(name)
    assert policy.name == name and policy.description
    assert load_policy(bundled_policies()[name]) == policy  # by path too
    assert policy.digest().startswith("sha256:")


def test_bundled_policies_say_what_they_promise():
    default, strict, research = (load_policy(n) for n in ("default", "strict", "research"))
    assert strict.privacy.lifetime_epsilon == 1.0 < default.privacy.lifetime_epsilon
    assert strict.privacy.delta < default.privacy.delta
    assert research.privacy.noise_multiplier is not None  # no calibration: fast rounds
    assert default.training.optimizer == strict.training.optimizer == "sgd"  # the recipe
    assert strict.privacy.noise_multiplier > default.privacy.noise_multiplier
    assert research.training.max_rounds_per_day > default.training.max_rounds_per_day


def test_default_file_is_the_python_default():
    loaded = load_policy("default")
    assert dataclasses.replace(loaded, name="custom", description="") == Policy()


def test_bundled_files_state_every_key_with_comments():
    keys = set(policy_keys())
    for path in bundled_policies().values():
        text = path.read_text()
        assert text.count("\n#") >= 3  # commented
        flat = set(_flatten(tomllib.loads(text)))
        one_of = {"privacy.round_epsilon", "privacy.noise_multiplier"}
        one_of |= {"gates.validation_noise_multiplier", "gates.validation_epsilon"}
        assert keys - one_of <= flat, path


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, dotted + ".")
        else:
            out[dotted] = value
    return out


def test_single_copy_of_the_policy_files():
    """The package holds the only copy; the top-level policies/ folder points there."""
    assert not list((ROOT / "policies").glob("*.toml"))
    readme = (ROOT / "policies" / "README.md").read_text()
    for name in NAMES:
        assert f"src/personal/policies/{name}.toml" in readme


def test_package_data_ships_the_policies():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["personal"]
    package = ROOT / "src" / "personal"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(bundled_policies().values()) <= shipped


@pytest.mark.slow
def test_wheel_install_finds_the_policies(tmp_path):
    """A non-editable install (a built wheel) carries and finds the bundled policies."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((ROOT / name).read_bytes())
    shutil.copytree(
        ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("personal-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import personal.policy as p; from pathlib import Path; "
        f"assert Path(p.__file__).is_relative_to({str(site)!r}), p.__file__; "
        "print(sorted(p.bundled_policies()), p.load_policy('strict').privacy.lifetime_epsilon)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(site)}, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert out.split() == ["['default',", "'research',", "'strict']", "1.0"]


# --- round trips and digests -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_round_trips(name):
    policy = load_policy(name)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert Policy.from_toml(policy.to_toml()) == policy
    assert tomllib.loads(policy.to_toml()) == policy.to_dict()


def test_round_trip_of_every_alternative_value():
    data = _base()
    for dotted, value in OTHER.items():
        if dotted not in ("privacy.round_epsilon", "gates.validation_epsilon"):
            _set(data, dotted, value)
    policy = Policy.from_dict(data)
    assert Policy.from_toml(policy.to_toml()) == policy
    assert policy.training.lora.targets == ("self_attn.q_proj",)
    assert policy.training.lora.num_layers == 3


def test_tables_cover_every_key():
    assert set(OTHER) == set(BAD) == set(policy_keys())


def test_digest_is_stable_and_canonical():
    policy = load_policy("default")
    assert (
        policy.digest()
        == load_policy("default").digest()
        == Policy.from_dict(policy.to_dict()).digest()
    )
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", policy.digest())
    # comments, key order and int-for-float spelling do not matter
    text = policy.to_toml().replace("steps = 4", "steps = 4  # a comment")
    lines = text.splitlines()
    reordered = "\n".join(lines[1::-1] + lines[2:])  # description before name
    assert Policy.from_toml(reordered).digest() == policy.digest()


@pytest.mark.parametrize("dotted", sorted(OTHER))
def test_digest_changes_with_every_value(dotted):
    changed = Policy.from_dict(_with(dotted, OTHER[dotted]))
    assert changed != Policy() and changed.digest() != Policy().digest()


def test_digest_known_answer():
    """The canonical form is part of the ledger format: changing it must be deliberate."""
    canonical = json.dumps(Policy().to_dict(), sort_keys=True, separators=(",", ":"))
    assert Policy().digest() == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def test_warm_start_defaults_to_the_population_adapter():
    """The default policy starts from the public population adapter (docs/dp-utility.md); the
    key is always in the digest, and research and strict keep a cold start."""
    assert Policy().training.warm_start == "population"
    assert load_policy("default").training.warm_start == "population"
    assert {load_policy(n).training.warm_start for n in ("research", "strict")} == {"none"}
    cold = Policy().with_overrides({"training.warm_start": "none"})
    assert cold.to_dict()["training"]["warm_start"] == "none"
    assert Policy.from_dict(cold.to_dict()) == cold and cold.digest() != Policy().digest()
    message = _error(_with("training.warm_start", "pretrained"))
    assert "training.warm_start" in message and '"none", "population"' in message


def test_a_bank_policy_needs_a_cold_start_and_no_ewc():
    """training.update = "bank" trains coefficients: no population warm start, no EWC; the key
    at its default ("lora") leaves the digest as it was before it."""
    assert Policy().training.update == "lora"
    explicit = _base()
    explicit["training"] = {**explicit.get("training", {}), "update": "lora"}
    assert Policy.from_dict(explicit).digest() == Policy.from_dict(_base()).digest()
    data = _base()
    _set(data, "training.update", "bank")
    message = _error(data)
    assert 'training.warm_start = "none"' in message and "continual.ewc_lambda = 0" in message
    bank = Policy().with_overrides(
        {"training.update": "bank", "training.warm_start": "none", "continual.ewc_lambda": 0.0}
    )
    assert bank.training.update == "bank" and bank.digest() != Policy().digest()


def test_quantile_clipping_keys_are_implicit_at_their_defaults():
    """Written out at their defaults the four keys leave the digest as it was before them."""
    explicit = _base()
    explicit["privacy"] |= {"clip": "fixed", "target_quantile": 0.5, "clip_learning_rate": 0.2,
                            "clip_count_noise": 0.05}  # fmt: skip
    assert Policy.from_dict(explicit).digest() == Policy().digest()
    assert not {"clip", "target_quantile"} & set(Policy().to_dict()["privacy"])
    assert Policy().privacy.quantile_clipping() is None
    quantile = Policy().with_overrides({"privacy.clip": "quantile"})
    assert quantile.to_dict()["privacy"]["clip"] == "quantile"
    clipping = quantile.privacy.quantile_clipping()
    assert (clipping.target_quantile, clipping.learning_rate, clipping.count_noise) == (
        0.5, 0.2, 0.05
    )  # fmt: skip


def test_quantile_clipping_needs_count_noise_above_half_sigma():
    data = _with("privacy.clip", "quantile")
    data["training"]["expected_batch_size"] = 16.0  # σ_b = 0.05 · 16 = 0.8, σ/2 = 0.8
    message = _error(data)
    assert "privacy.clip_count_noise" in message and "privacy.noise_multiplier" in message
    assert "training.expected_batch_size" in message and 'privacy.clip = "fixed"' in message
    data["privacy"]["clip_count_noise"] = 0.06  # σ_b = 0.96 > 0.8
    assert Policy.from_dict(data).privacy.clip == "quantile"
    data["privacy"]["clip"] = "fixed"  # the fixed clip norm never needs it
    data["privacy"]["clip_count_noise"] = 0.01
    assert Policy.from_dict(data).privacy.clip == "fixed"


# --- construction and overrides ----------------------------------------------------------------


def test_direct_construction_validates_and_normalises():
    with pytest.raises(PolicyError, match=r"privacy\.delta = 0 \(int\): out of range"):
        PrivacyPolicy(delta=0)
    assert PrivacyPolicy(noise_multiplier=2).round_epsilon is None
    assert PrivacyPolicy().round_epsilon is None
    assert PrivacyPolicy().noise_multiplier == 1.6  # the default policy's
    assert PrivacyPolicy(round_epsilon=0.5).noise_multiplier is None
    clip = PrivacyPolicy(clip_norm=2).clip_norm
    assert clip == 2.0 and isinstance(clip, float)
    assert LoRAPolicy(targets=["mlp.down_proj"]).targets == ("mlp.down_proj",)
    with pytest.raises(PolicyError, match="must be a table"):
        Policy(privacy={"unit": "day"})  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().name = "x"  # type: ignore[misc]


def test_with_overrides():
    policy = load_policy("default").with_overrides(
        {"training.steps": 5, "privacy.noise_multiplier": 2, "privacy.round_epsilon": None}
    )
    assert policy.training.steps == 5 and policy.privacy.noise_multiplier == 2.0
    assert policy.privacy.round_epsilon is None
    with pytest.raises(PolicyError, match=r"training\.stepz: unknown key"):
        policy.with_overrides({"training.stepz": 5})
    with pytest.raises(PolicyError, match="no such section"):
        policy.with_overrides({"nope.steps": 5})


def test_lora_config():
    config = load_policy("strict").training.lora.to_lora_config()
    targets = ("self_attn.o_proj", "mlp.down_proj")
    assert (config.rank, config.scale, config.targets, config.num_layers) == (1, 20.0, targets, 2)


# --- errors ------------------------------------------------------------------------------------


def test_policy_error_is_a_config_error():
    assert issubclass(PolicyError, ConfigError) and issubclass(PolicyError, PersonalError)


@pytest.mark.parametrize("dotted", sorted(BAD))
def test_wrong_type_names_key_value_and_type(dotted):
    value = BAD[dotted][0]
    message = _error(_with(dotted, value))
    line = next(line for line in message.splitlines() if dotted in line)
    assert f"{dotted} = " in line and "must be" in line
    assert repr(value)[:20] in line or str(value).lower() in line


@pytest.mark.parametrize("dotted", sorted(BAD))
def test_out_of_range_names_key_value_and_range(dotted):
    value = BAD[dotted][1]
    message = _error(_with(dotted, value))
    line = next(line for line in message.splitlines() if dotted in line)
    assert f"{dotted} = " in line and "must be" in line
    assert repr(value)[:20] in line
    assert re.search(r"[\[(]-?[\d.e+-]+, [\d.e+-]+[\])]|one of|name of|string of|list", line)


def test_bool_is_not_an_int_but_int_is_a_float():
    assert "true (boolean)" in _error(_with("training.steps", True))
    policy = Policy.from_dict(_with("privacy.lifetime_epsilon", 3))
    assert policy.privacy.lifetime_epsilon == 3.0
    assert isinstance(policy.privacy.lifetime_epsilon, float)
    assert "out of range" in _error(_with("privacy.clip_norm", 10**400))


@pytest.mark.parametrize(
    ("where", "key", "suggestion"),
    [("", "privcy", "privacy"), ("privacy", "detla", "delta"), ("training.lora", "rnk", "rank")],
)
def test_unknown_key_at_any_level(where, key, suggestion):
    data = _base()
    table = data
    for part in where.split(".") if where else []:
        table = table[part]
    table[key] = 1
    dotted = f"{where}.{key}" if where else key
    message = _error(data)
    assert f"{dotted}: unknown key. Did you mean {suggestion!r}?" in message
    assert "Remove it or fix its spelling" in message


def test_non_string_and_odd_keys_are_reported():
    data = _base()
    data[3] = 1
    data["privacy"]["a b"] = 2
    message = _error(data)
    assert "3: unknown key" in message and "privacy.'a b': unknown key" in message


def test_missing_required_keys():
    assert "privacy: missing; required" in _error({})
    data = _base()
    del data["privacy"]["delta"]
    assert "privacy.delta: missing; required, a number in (0, 0.001]" in _error(data)
    data = _base()
    del data["privacy"]["noise_multiplier"]
    assert "privacy.round_epsilon / privacy.noise_multiplier: missing" in _error(data)
    # every other section and key has a default
    minimal = {"privacy": {k: data["privacy"][k] for k in ("unit", "lifetime_epsilon", "delta")}}
    minimal["privacy"]["noise_multiplier"] = 1.0
    assert Policy.from_dict(minimal).training == Policy().training


def test_section_of_the_wrong_type():
    data = _base()
    data["training"] = 5
    data["training_"] = {}
    message = _error(data)
    assert "training = 5 (int): must be a table (a [training] section)" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"privacy.round_epsilon": 0.5}, "are both set: set exactly one"),
        ({"gates.validation_epsilon": 1.0}, "gates.validation_noise_multiplier and gates."),
        (
            {"privacy.round_epsilon": 9.0, "privacy.noise_multiplier": None},
            "privacy.round_epsilon = 9.0 exceeds privacy.lifetime",
        ),
        ({"continual.replay_share": 0.6, "continual.public_replay_share": 0.4}, "must be < 1"),
        ({"continual.buffer_capacity": 0, "continual.replay_share": 0.25}, "needs a replay buffer"),
        ({"retention.days": 10}, "retention.epoch_days = 30 exceeds retention.days = 10"),
        ({"migration.strategy": "retrain", "migration.retrain_budget_share": 0}, "share > 0"),
    ],
)
def test_cross_field_checks(changes, expected):
    data = _base()
    for dotted, value in changes.items():
        _set(data, dotted, value)
    assert expected in _error(data)


def test_validation_epsilon_within_lifetime():
    data = _with("gates.validation_epsilon", 9.0)
    assert "gates.validation_epsilon = 9.0 exceeds privacy.lifetime_epsilon" in _error(data)
    assert Policy.from_dict(_with("gates.validation_epsilon", 1.0)).gates.validation_epsilon == 1


def test_all_problems_in_one_message():
    data = _base()
    _set(data, "privacy.delta", 1.0)
    _set(data, "training.steps", "many")
    _set(data, "training.lora.rank", -1)
    _set(data, "store.synchronous", "OFF")
    data["extra"] = True
    message = _error(data)
    assert message.startswith("invalid policy (5 problems)")
    for key in ("privacy.delta", "training.steps", "training.lora.rank", "store.synchronous"):
        assert key in message
    assert "docs/policies.md" in message


def test_malformed_toml_and_files(tmp_path):
    with pytest.raises(PolicyError, match=r"invalid policy .*bad\.toml: not valid TOML \(.*line"):
        path = tmp_path / "bad.toml"
        path.write_text("[privacy\nunit = 'day'\n")
        load_policy(path)
    path.write_bytes(b"name = '\xff'\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)
    with pytest.raises(PolicyError, match=r"no policy file at .*bundled name \(default, "):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="no policy file"):
        load_policy(tmp_path)  # a directory
    with pytest.raises(PolicyError, match="not valid TOML"):
        Policy.from_toml("a = = 1")
    with pytest.raises(PolicyError, match="a bundled name"):
        load_policy(5)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="must be a table of sections"):
        Policy.from_dict([1, 2])


def test_bundled_name_wins_and_policy_passes_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "strict").write_text("not toml at all [")
    assert load_policy("strict").name == "strict"
    policy = Policy()
    assert load_policy(policy) is policy


def test_docs_list_every_key():
    docs = (ROOT / "docs" / "policies.md").read_text()
    for dotted in policy_keys():
        assert f"`{dotted}`" in docs, dotted


# --- fuzzing: nothing but PolicyError ----------------------------------------------------------

_KEYS = sorted({k for dotted in policy_keys() for k in dotted.split(".")})
_NEAR = [v for pair in BAD.values() for v in pair] + list(OTHER.values())
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(_NEAR)
    | st.datetimes()
    | st.binary(max_size=4)
)
_KEY = st.sampled_from(_KEYS) | st.text(max_size=8) | st.integers(-3, 3)
_TREES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(_KEY, children, max_size=6)
    ),
    max_leaves=30,
)
_SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        name: st.dictionaries(_KEY, _TREES, max_size=6) | _TREES
        for name in ("privacy", "training", "continual", "gates", "store", "name")
    },
)


def _only_policy_errors(build) -> None:
    try:
        policy = build()
    except PolicyError as exc:
        assert str(exc)
        return
    assert isinstance(policy, Policy)
    assert Policy.from_toml(policy.to_toml()) == policy  # whatever loads also round-trips


@settings(max_examples=150, deadline=None)
@given(_TREES | _SECTIONS)
def test_fuzz_from_dict_arbitrary_trees(data):
    _only_policy_errors(lambda: Policy.from_dict(data))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(NAMES),
    st.lists(
        st.tuples(
            st.sampled_from(sorted(policy_keys())),
            st.sampled_from([*_NEAR, "<delete>"]) | _TREES,
        ),
        max_size=4,
    ),
)
def test_fuzz_from_dict_real_keys_wrong_values(name, changes):
    data = load_policy(name).to_dict()
    for dotted, value in changes:
        table = _set(data, dotted, value)
        if value == "<delete>":
            table.pop(dotted.rpartition(".")[2])
    _only_policy_errors(lambda: Policy.from_dict(data))


_TOML_VALUES = st.sampled_from(
    ["1", "0", "-1", "1.5", "1e-6", "1e400", "inf", "nan", "true", '"day"', '"all-linear"',
     "'x'", "[]", '["self_attn.q_proj"]', "[1, 2]", "{a = 1}", "1979-05-27", "07:32:00",
     '"""multi\nline"""', "0x10", "1_000", '"FULL"', "8", "1e-08", "0.5", "= 1", "[", "",
     '"\\u0000"', '"a\\tb"', "0.1", "100", "1024", "2.0", '"session"', '"prv"', '"NORMAL"']
)  # fmt: skip
_TOML_LINES = st.one_of(
    st.builds("{} = {}".format, st.sampled_from(_KEYS) | st.text(max_size=6), _TOML_VALUES),
    st.sampled_from(
        ["[privacy]", "[training]", "[training.lora]", "[continual]", "[gates]", "[retention]",
         "[migration]", "[store]", "[[privacy]]", "[privacy.x]", "# comment", "", "[", "]"]
    ),
    st.text(max_size=20),
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.lists(_TOML_LINES, max_size=25) | st.text(max_size=200).map(lambda t: [t]))
def test_fuzz_from_toml_arbitrary_text(lines):
    _only_policy_errors(lambda: Policy.from_toml("\n".join(lines)))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(NAMES),
    st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from(["replace", "insert", "delete", "value"])),
        max_size=5,
    ),
    st.lists(_TOML_LINES, min_size=5, max_size=5),
    st.lists(_TOML_VALUES, min_size=5, max_size=5),
)
def test_fuzz_from_toml_mutated_policy_files(name, edits, new_lines, new_values):
    """Bundled files with lines replaced, inserted, deleted, or a value swapped."""
    lines = bundled_policies()[name].read_text().splitlines()
    for (index, action), line, value in zip(edits, new_lines, new_values, strict=False):
        i = index % (len(lines) + 1)
        if action == "insert":
            lines.insert(i, line)
        elif i == len(lines):
            continue
        elif action == "replace":
            lines[i] = line
        elif action == "delete":
            del lines[i]
        elif "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + value
    _only_policy_errors(lambda: Policy.from_toml("\n".join(lines)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(NAMES))
def test_fuzz_load_policy_file_bytes(noise, name):
    base = bundled_policies()[name].read_bytes()
    cut = len(noise) % (len(base) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.toml"
        path.write_bytes(base[:cut] + noise + base[cut:])
        _only_policy_errors(lambda: load_policy(path))
