"""No traceback, ever, for any input (issue 19, items 12-15).

Each CLI command meets hostile input: generated JSONL lines, TOML, paths and timestamps at the
edges of the calendar, directories where files belong, deep nesting, non-finite numbers. Every
run must end in success or a named error (``error: ...``, exit status 2 for bad input, 1 for a
verification that found damage), never a Python traceback, and the store must still verify.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from personal.adapters import AdapterRegistry
from personal.privacy.ledger import Ledger
from personal.store import InteractionLog, Passphrase, ScryptParams, Store
from personal.store import keys as keys_module

import mlx.core as mx
import pytest
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trained_store import PASS, run

FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEEP = 50_000  # far past any parser's recursion limit


@pytest.fixture(scope="module", autouse=True)
def cheap_scrypt() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with records, a ledger (genesis + anchor) and an active adapter; no training."""
    path = tmp_path_factory.mktemp("hostile") / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))
        with InteractionLog.create(path, Passphrase(PASS), synchronous="NORMAL") as log:
            for i in range(5):
                log.append(f"prompt {i}", f"response {i}", unit=f"u{i}")
    with Store.open(path, Passphrase(PASS)) as opened:
        Ledger.open(opened, epsilon=4.0, delta=1e-6)
    _with_adapter(path)
    return path


def _with_adapter(path: Path) -> None:
    """Save and activate a small adapter in the store at ``path``."""
    registry = AdapterRegistry.for_store(path)
    weights = {f"model.layers.0.self_attn.q_proj.lora_{ab}": mx.ones((4, 4)) for ab in "ab"}
    lora = {"rank": 4, "scale": 20.0, "dropout": 0.0, "targets": None, "num_layers": None}
    registry.activate(registry.save(weights, base_fingerprint="sha256:" + "a" * 64,
                                    base_name="base-test", lora=lora))  # fmt: skip


def _clean(result: Result, *codes: int) -> None:
    """Ended on purpose with one of ``codes``: no traceback, no uncaught exception."""
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert result.exit_code in codes, (result.exit_code, result.output)
    if result.exit_code == 2:
        assert "error:" in result.output or "Error:" in result.output, result.output


def _verifies(store: Path) -> None:
    result = run("verify", store)
    assert result.exit_code == 0, result.output


def _deep(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


# --- values -----------------------------------------------------------------------------------

edge_times = st.one_of(
    st.sampled_from([
        "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59Z",
        "0001-01-01", "2024-02-30", "2024-13-01", "", " ", "yesterday", "1e999",
    ]),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]),
)  # fmt: skip
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
fields = st.sampled_from(
    ["prompt", "response", "unit", "ts", "feedback", "source", "metadata", "id", "other"]
)


@st.composite
def jsonl_lines(draw: Any) -> str:
    """One import line: mostly well-formed objects with hostile values, sometimes garbage."""
    kind = draw(st.sampled_from(["object", "object", "object", "raw", "deep", "nonfinite"]))
    if kind == "raw":
        return draw(st.text(max_size=40)).replace("\n", " ")
    if kind == "deep":
        return '{"prompt": "p", "response": "r", "feedback": ' + _deep(DEEP) + "}"
    if kind == "nonfinite":
        bad = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]))
        where = draw(st.sampled_from(["feedback", "metadata"]))
        value = bad if where == "feedback" else '{"x": ' + bad + "}"
        return '{"prompt": "p", "response": "r", "' + where + '": ' + value + "}"
    item = {"prompt": "p", "response": "r"} if draw(st.booleans()) else {}
    item.update(draw(st.dictionaries(fields, values, max_size=4)))
    if draw(st.booleans()):
        item["ts"] = draw(edge_times)
    return json.dumps(item, allow_nan=True)


# --- properties -------------------------------------------------------------------------------


@FAST
@given(lines=st.lists(jsonl_lines(), min_size=1, max_size=3))
def test_import_of_hostile_lines_imports_or_names_the_problem(
    store: Path, tmp_path: Path, lines: list[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    _clean(run("import", store, source), 0, 2)


def test_after_hostile_imports_the_store_verifies_and_exports_valid_json(store: Path) -> None:
    _verifies(store)
    result = run("export", store)
    assert result.exit_code == 0, result.output

    def refuse(name: str) -> None:
        raise ValueError(f"export wrote {name}")

    for line in result.stdout.splitlines():
        item = json.loads(line, parse_constant=refuse)
        assert all(math.isfinite(x) for x in _numbers(item))


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, float) else []


@FAST
@given(when=edge_times)
def test_erase_before_an_edge_time_erases_or_names_the_problem(store: Path, when: Any) -> None:
    when = str(when)
    if when.startswith("-"):
        when = " " + when  # not an option
    _clean(run("erase", store, "--before", when), 0, 2)


toml_values = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "-1", '"x"', "true", "[]", "{}"]),
    st.integers().map(str),
    st.just(_deep(DEEP, "1")),
    st.text(max_size=30).map(json.dumps),
)
toml_keys = st.sampled_from([
    "privacy.lifetime_epsilon", "privacy.delta", "privacy.unit", "privacy.noise_multiplier",
    "training.steps", "training.lora.rank", "continual.buffer_capacity", "name", "nope.nope",
])  # fmt: skip


@FAST
@given(
    pairs=st.lists(st.tuples(toml_keys, toml_values), max_size=3),
    garbage=st.text(max_size=30),
)
def test_policy_check_and_init_on_hostile_toml(
    tmp_path: Path, pairs: list[tuple[str, str]], garbage: str
) -> None:
    text = "".join(f"{k} = {v}\n" for k, v in pairs) + (garbage if len(pairs) < 2 else "")
    policy = tmp_path / "p.toml"
    policy.write_text(text, encoding="utf-8", errors="surrogatepass")
    _clean(run("policy", "check", policy), 0, 2)
    fresh = tmp_path / f"s{abs(hash(text))}"
    _clean(run("init", fresh, "--policy", policy), 0, 2)


@FAST
@given(
    path=st.lists(
        st.sampled_from(["afile", "sub", "..", ".", "x" * 300, "dir", "a b", "ü"]),
        min_size=1, max_size=3,
    )
)  # fmt: skip
def test_init_and_audit_html_on_hostile_paths(tmp_path: Path, path: list[str]) -> None:
    (tmp_path / "afile").touch(exist_ok=True)
    (tmp_path / "dir").mkdir(exist_ok=True)
    target = tmp_path.joinpath(*path)
    _clean(run("init", target), 0, 2)
    _clean(run("audit", tmp_path / "nope", "--html", target / "a.html"), 2)


def test_audit_html_into_a_missing_directory(store: Path) -> None:
    result = run("audit", store, "--html", "/missing/dir/a.html")
    _clean(result, 2)
    assert "/missing/dir/a.html" in result.output


def test_init_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").touch()
    result = run("init", tmp_path / "afile" / "sub")
    _clean(result, 2)
    assert "Not a directory" in result.output


# --- damaged store files ----------------------------------------------------------------------

COMMANDS = (("verify",), ("stats",), ("export",), ("audit",), ("adapters", "verify"),
            ("adapters", "list"), ("repair",))  # fmt: skip


@pytest.mark.parametrize("name", ["store.json", "ledger.anchor", "adapters/ACTIVE", "store.db"])
def test_a_directory_where_a_file_belongs(store: Path, tmp_path: Path, name: str) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    target = copy / name
    target.unlink()
    target.mkdir()
    outcomes = set()
    for command in COMMANDS:
        result = run(command[0], copy, *command[1:]) if len(command) == 1 else run(
            *command[:1], command[1], copy)  # fmt: skip
        _clean(result, 0, 1, 2)
        outcomes.add(result.exit_code)
    assert outcomes - {0}, f"nothing noticed {name} is a directory"


@pytest.mark.parametrize("name", ["store.json", "ledger.anchor", "adapters/ACTIVE"])
def test_deeply_nested_json_in_a_store_file(store: Path, tmp_path: Path, name: str) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / name).write_text(_deep(DEEP))
    for command in COMMANDS:
        result = run(command[0], copy, *command[1:]) if len(command) == 1 else run(
            *command[:1], command[1], copy)  # fmt: skip
        _clean(result, 0, 1, 2)


def test_deeply_nested_safetensors_header(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (weights,) = (copy / "adapters").glob("v*/adapter.safetensors")
    header = _deep(DEEP).encode()
    data = len(header).to_bytes(8, "little") + header
    weights.write_bytes(data)  # with a recomputed hash: the parser itself meets it
    manifest = json.loads((weights.parent / "manifest.json").read_text())
    manifest.update(weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    (weights.parent / "manifest.json").write_text(json.dumps(manifest))
    result = run("adapters", "verify", copy)
    _clean(result, 1)
    assert "nested too deeply" in result.output


def test_kek_check_value_stored_as_text(store: Path, tmp_path: Path) -> None:
    import sqlite3

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    conn = sqlite3.connect(copy / "store.db")
    conn.execute("UPDATE store_kek SET check_ct = CAST(check_ct AS TEXT)")
    conn.commit()
    conn.close()
    result = run("verify", copy)
    _clean(result, 2)
    assert "key check value is damaged" in result.output and "wrong key" not in result.output


# --- messages that point the right way, permissions --------------------------------------------


def test_missing_store_json_never_advises_removing_the_data(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "store.json").unlink()
    result = run("verify", copy)
    _clean(result, 2)
    assert "Do not remove the directory" in result.output
    assert "remove the directory and" not in result.output


def test_every_file_the_store_creates_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))
        _clean(run("init", path), 0)
    with Store.open(path, Passphrase(PASS)) as opened:
        Ledger.open(opened, epsilon=4.0, delta=1e-6)
    _with_adapter(path)
    files = [p for p in path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert names >= {"store.json", "store.db", "ledger.anchor", "ACTIVE", "manifest.json"}
    for p in files:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_init_through_a_missing_parent_never_touches_an_existing_store(tmp_path: Path) -> None:
    """``new/../old`` names no directory before the parents are made, and an existing store
    after: init must refuse it, not connect to (and on failure clean up) the old store."""
    old = tmp_path / "old"
    _clean(run("init", old), 0)
    db = (old / "store.db").read_bytes()
    result = run("init", tmp_path / "new" / ".." / "old")
    _clean(result, 2)
    assert "a store already exists" in result.output
    assert (old / "store.db").read_bytes() == db
    _verifies(old)


def test_adapters_deactivate_is_the_way_out_of_a_changed_lora_rank(
    store: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    result = run("adapters", "deactivate", copy)
    _clean(result, 0)
    assert "deactivated version 1" in result.output
    assert AdapterRegistry.for_store(copy).pointer().active is None
    assert "no adapter was active" in run("adapters", "deactivate", copy).output
    _clean(run("adapters", "rollback", copy), 0)
    assert AdapterRegistry.for_store(copy).pointer().active == 1
