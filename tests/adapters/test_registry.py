"""The registry: versions, activation, rollback, hot swap, base binding, prune, verify."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from personal.adapters import AdapterRegistry
from personal.adapters import registry as registry_module
from personal.errors import (
    AdapterBaseMismatch,
    AdapterCorrupt,
    AdapterError,
    AdapterFormatTooNew,
    AdapterMismatch,
    AdapterNotFound,
    ConfigError,
    InvalidManifest,
    RollbackUnavailable,
)

import mlx.core as mx
import pytest
from adapter_helpers import FP, LORA, OTHER_FP, same, save, weights_for
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "adapters")


def _tamper(registry: AdapterRegistry, version: int) -> None:
    path = registry.path / f"v{version:06d}" / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# --- versions and the pointer --------------------------------------------------------------


def test_empty_registry(registry):
    assert registry.versions() == [] and registry.list() == []
    assert registry.active_version is None and registry.active is None
    assert registry.previous_version is None
    assert registry.verify().ok and not registry.path.exists()  # reading creates nothing
    with pytest.raises(AdapterNotFound, match="No adapter is active"):
        registry.load()
    with pytest.raises(RollbackUnavailable, match="activate"):
        registry.rollback()


def test_versions_increase_and_save_does_not_activate(registry):
    assert [save(registry, i) for i in (1, 2, 3)] == [1, 2, 3]
    assert registry.active_version is None
    with pytest.raises(AdapterNotFound, match=r"versions: 1, 2, 3"):
        registry.load(9)
    with pytest.raises(ConfigError):
        registry.load(0)


def test_activate_rollback_is_an_undo_stack(registry):
    for i in (1, 2, 3):
        save(registry, i)
    registry.activate(1)
    registry.activate(2)
    registry.activate(3)
    assert registry.active_version == 3 and registry.previous_version == 2
    assert registry.active.version == 3
    assert registry.rollback().version == 2
    assert registry.rollback().version == 1
    assert registry.active_version == 1
    with pytest.raises(RollbackUnavailable):
        registry.rollback()
    assert registry.active_version == 1


def test_reactivating_the_active_version_changes_no_history(registry):
    save(registry, 1)
    save(registry, 2)
    registry.activate(1)
    registry.activate(2)
    registry.activate(2)
    assert registry.pointer().history == (1,)


def test_rollback_to_a_named_version(registry):
    for i in (1, 2, 3, 4):
        save(registry, i)
    for i in (1, 2, 3, 4):
        registry.activate(i)
    assert registry.rollback(to=2).version == 2
    assert registry.pointer().history == (1,)  # 3 and 4 came after 2: forgotten as targets
    assert registry.rollback(to=4).version == 4  # a named version needs no history
    assert registry.previous_version == 1


def test_rollback_skips_pruned_versions(registry):
    for i in (1, 2, 3):
        save(registry, i)
        registry.activate(i)
    registry.deactivate()  # history 1, 2, 3
    assert registry.active_version is None
    assert registry.rollback().version == 3
    (registry.path / "v000002").rename(registry.path / "gone")  # as if deleted by hand
    assert registry.rollback().version == 1


def test_activation_of_a_tampered_version_is_refused(registry):
    save(registry, 1)
    save(registry, 2)
    registry.activate(1)
    _tamper(registry, 2)
    with pytest.raises(AdapterCorrupt):
        registry.activate(2)
    assert registry.active_version == 1 and registry.pointer().history == ()


def test_activation_checks_the_base_without_a_model(registry):
    save(registry, 1)
    with pytest.raises(AdapterBaseMismatch, match="never loads onto another base"):
        registry.activate(1, base_fingerprint=OTHER_FP)
    assert registry.active_version is None
    registry.activate(1, base_fingerprint=FP)
    assert registry.active_version == 1


def test_damaged_pointer_is_named_and_activate_repairs_it(registry):
    save(registry, 1)
    registry.activate(1)
    (registry.path / "ACTIVE").write_text("{not json")
    with pytest.raises(InvalidManifest, match="personal adapters activate"):
        registry.active_version  # noqa: B018
    assert not registry.verify().ok
    with pytest.raises(InvalidManifest):
        registry.prune(keep=1)  # a damaged pointer never guides a deletion
    registry.activate(1)
    assert registry.active_version == 1 and registry.verify().ok


@pytest.mark.parametrize(
    "content",
    [
        {"format": "personal-adapter-pointer", "format_version": 1, "active": 0},
        {"format": "x", "format_version": 1, "active": 1, "history": [], "updated": ""},
        {
            "format": "personal-adapter-pointer",
            "format_version": 1,
            "active": True,
            "history": [],
            "updated": "",
        },
    ],
)
def test_malformed_pointers(registry, content):
    save(registry, 1)
    (registry.path / "ACTIVE").write_text(json.dumps(content))
    with pytest.raises(InvalidManifest):
        registry.pointer()


def test_pointer_from_newer_personal(registry):
    save(registry, 1)
    registry.activate(1)
    path = registry.path / "ACTIVE"
    path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 5'))
    with pytest.raises(AdapterFormatTooNew, match="upgrade"):
        registry.active_version  # noqa: B018
    with pytest.raises(AdapterFormatTooNew):
        registry.activate(1)  # never silently downgraded


# --- prune ---------------------------------------------------------------------------------


def test_prune_keeps_newest_active_and_rollback_target(registry):
    for i in range(1, 8):
        save(registry, i)
    registry.activate(2)
    registry.activate(3)  # active 3, rollback target 2
    assert registry.prune(keep=2) == [1, 4, 5]
    assert registry.versions() == [2, 3, 6, 7]
    assert registry.rollback().version == 2
    assert registry.prune(keep=1) == [3, 6]  # 3 is no longer a rollback target
    assert registry.versions() == [2, 7]
    assert save(registry, 8) == 8  # numbers are never reused
    assert registry.verify().ok


def test_numbering_after_the_newest_was_deleted_by_hand(registry):
    for i in (1, 2, 3):
        save(registry, i)
    registry.activate(1)
    registry.prune(keep=1)
    (registry.path / "v000003").rename(registry.path / "elsewhere")
    # The pointer remembers nothing above 1 here, so the next number is 2: documented, and
    # only reachable by deleting the newest version by hand.
    assert save(registry, 9) == 2


@pytest.mark.parametrize("keep", [0, -1, True, 1.5])
def test_prune_needs_keep_of_at_least_one(registry, keep):
    save(registry, 1)
    with pytest.raises(ConfigError, match="at least 1"):
        registry.prune(keep=keep)


# --- verify, list, leftovers ---------------------------------------------------------------


def test_verify_reports_every_problem(registry):
    for i in (1, 2, 3):
        save(registry, i)
    registry.activate(1)
    _tamper(registry, 2)
    manifest = registry.path / "v000003" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"tensors": 4', '"tensors": "4"'))
    report = registry.verify()
    assert not report.ok and report.verified == [1] and report.active == 1
    assert len(report.problems) == 2
    assert "version 2" in report.problems[0] and "SHA-256" in report.problems[0]
    assert "version 3" in report.problems[1]
    rows = registry.list()
    assert [(r.version, r.active, r.problem is None) for r in rows] == [
        (1, True, True),
        (2, False, True),  # list reads manifests only; verify reads the weights
        (3, False, False),
    ]
    assert rows[0].to_dict()["sha256"] == registry.manifest(1).weights_sha256


def test_missing_active_version_is_reported(registry):
    save(registry, 1)
    registry.activate(1)
    (registry.path / "v000001").rename(registry.path / "moved")
    report = registry.verify()
    assert not report.ok and "active version 1 is missing" in report.problems[0]


def test_leftovers_are_ignored_then_cleaned_by_the_next_writer(registry):
    save(registry, 1)
    registry.activate(1)
    (registry.path / ".tmp-000002-dead").mkdir()
    (registry.path / ".tmp-000002-dead" / "adapter.safetensors").write_bytes(b"partial")
    (registry.path / ".trash-000001-dead").mkdir()
    (registry.path / "ACTIVE.tmp").write_text("{")  # the name before personal.filesafety
    (registry.path / "ACTIVE.0badf00d.tmp").write_text("{")  # a killed atomic_write_bytes
    assert registry.versions() == [1] and registry.active_version == 1
    report = registry.verify()
    assert report.ok and len(report.leftovers) == 4
    assert save(registry, 2) == 2
    assert sorted(os.listdir(registry.path)) == [".lock", "ACTIVE", "v000001", "v000002"]


def test_for_store(tmp_path):
    with pytest.raises(AdapterNotFound, match="personal init"):
        AdapterRegistry.for_store(tmp_path / "nope")
    assert AdapterRegistry.for_store(tmp_path).path == tmp_path / "adapters"


# --- simulated crashes at each step (the SIGKILL test is test_registry_crash.py) ---------


class Crash(BaseException):
    """Stands for the process dying at this point."""


@pytest.mark.parametrize("point", ["rename", "fsync_dir"])
def test_save_interrupted_leaves_no_version(registry, monkeypatch, point):
    save(registry, 1)
    registry.activate(1)
    target = os if point == "rename" else registry_module
    name = "rename" if point == "rename" else "fsync_dir"
    monkeypatch.setattr(target, name, _raiser(Crash))
    with pytest.raises(Crash):
        save(registry, 2)
    monkeypatch.undo()
    assert registry.versions() == [1] and registry.active_version == 1
    assert save(registry, 2) == 2 and registry.verify().leftovers == []


def test_activate_interrupted_before_replace_keeps_the_old_pointer(registry, monkeypatch):
    save(registry, 1)
    save(registry, 2)
    registry.activate(1)
    monkeypatch.setattr(os, "replace", _raiser(Crash))
    with pytest.raises(Crash):
        registry.activate(2)
    monkeypatch.undo()
    assert registry.active_version == 1
    assert not [p for p in os.listdir(registry.path) if p.endswith(".tmp")]  # temp removed
    assert registry.rollback(to=2).version == 2


def _raiser(exc: type[BaseException]):
    def fail(*args, **kwargs):
        raise exc()

    return fail


def test_concurrent_writers_get_distinct_versions(registry):
    errors: list[BaseException] = []

    def work(tag: int) -> None:
        try:
            for _ in range(4):
                registry.activate(save(registry, tag))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and registry.versions() == list(range(1, 9)) and registry.verify().ok


# --- live models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live():
    """A tiny llama with rank-4 LoRA on every linear."""
    from personal.model.lora import LoRAConfig, inject_lora

    from tiny_models import build_tiny_model

    model, _ = build_tiny_model("llama", 384, seed=3)
    inject_lora(model, LoRAConfig(rank=4))
    return model


def _adapters(live, count):
    from personal.model.lora import fresh_adapter_weights

    out = []
    for seed in range(count):
        weights = fresh_adapter_weights(live, seed=seed)
        # A non-zero B so that each adapter changes the output.
        weights = {
            k: (mx.random.normal(v.shape, key=mx.random.key(seed)) * 0.05 if "lora_b" in k else v)
            for k, v in weights.items()
        }
        out.append(weights)
    return out


def _save_live(registry, weights, fp=FP, lora=None):
    from personal.model.lora import LoRAConfig

    lora = lora or LoRAConfig(rank=4)
    return registry.save(weights, base_fingerprint=fp, base_name="tiny", lora=lora)


def _logits(model):
    return model(mx.array([[1, 2, 3, 4]]))


def test_activate_hot_swaps_the_live_model(registry, live):
    from personal.model.lora import get_adapter_weights

    a, b = _adapters(live, 2)
    va, vb = _save_live(registry, a), _save_live(registry, b)
    registry.activate(va, model=live, base_fingerprint=FP)
    assert same(get_adapter_weights(live), a)
    out_a = _logits(live)
    registry.activate(vb, model=live, base_fingerprint=FP)
    assert same(get_adapter_weights(live), b)
    assert not mx.allclose(out_a, _logits(live)).item()
    registry.rollback(model=live, base_fingerprint=FP)
    assert same(get_adapter_weights(live), a) and mx.array_equal(out_a, _logits(live)).item()
    registry.activate(vb)
    assert registry.load_into(live, base_fingerprint=FP).version == vb
    assert same(get_adapter_weights(live), b)


def test_wrong_base_is_refused_and_nothing_changes(registry, live):
    from personal.model.lora import get_adapter_weights

    a, b = _adapters(live, 2)
    va = _save_live(registry, a)
    vb = _save_live(registry, b, fp=OTHER_FP)
    registry.activate(va, model=live, base_fingerprint=FP)
    before = _logits(live)
    with pytest.raises(AdapterBaseMismatch, match="migrate"):
        registry.activate(vb, model=live, base_fingerprint=FP)
    with pytest.raises(AdapterBaseMismatch):
        registry.load_into(live, vb, base_fingerprint=FP)
    assert isinstance(AdapterBaseMismatch("x"), AdapterMismatch)
    assert registry.active_version == va and same(get_adapter_weights(live), a)
    assert mx.array_equal(before, _logits(live)).item()


def test_wrong_shape_is_refused_and_nothing_changes(registry, live):
    from personal.model.lora import LoRAConfig, get_adapter_weights

    (a,) = _adapters(live, 1)
    va = _save_live(registry, a)
    registry.activate(va, model=live, base_fingerprint=FP)
    rank8 = {
        k: mx.zeros((v.shape[0], 8) if "lora_a" in k else (8, v.shape[1])) for k, v in a.items()
    }
    v8 = _save_live(registry, rank8, lora=LoRAConfig(rank=8))
    with pytest.raises(AdapterMismatch, match="nothing was changed"):
        registry.activate(v8, model=live, base_fingerprint=FP)
    assert registry.active_version == va and same(get_adapter_weights(live), a)


def test_failed_pointer_write_restores_the_live_model(registry, live, monkeypatch):
    from personal.model.lora import get_adapter_weights

    a, b = _adapters(live, 2)
    va, vb = _save_live(registry, a), _save_live(registry, b)
    registry.activate(va, model=live, base_fingerprint=FP)
    monkeypatch.setattr(os, "replace", _raiser(OSError))
    with pytest.raises(OSError):
        registry.activate(vb, model=live, base_fingerprint=FP)
    monkeypatch.undo()
    assert registry.active_version == va and same(get_adapter_weights(live), a)


def test_swapping_into_a_bare_module_needs_the_fingerprint(registry, live):
    (a,) = _adapters(live, 1)
    v = _save_live(registry, a)
    with pytest.raises(ConfigError, match="base_fingerprint"):
        registry.activate(v, model=live)
    assert registry.active_version is None


def test_base_model_object_supplies_its_fingerprint(tmp_path, tiny_model_factory):
    from personal.model.base import load_base
    from personal.model.lora import (
        LoRAConfig,
        fresh_adapter_weights,
        get_adapter_weights,
        inject_lora,
    )

    base = load_base(tiny_model_factory("qwen2"))
    inject_lora(base.model, LoRAConfig(rank=2))
    registry = AdapterRegistry.for_store(tmp_path)
    weights = fresh_adapter_weights(base.model, seed=7)
    v = registry.save(
        weights, base_fingerprint=base.fingerprint, base_name=base.name, lora=LoRAConfig(rank=2)
    )
    registry.activate(v, model=base)
    assert same(get_adapter_weights(base.model), weights)
    other = registry.save(weights, base_fingerprint=OTHER_FP, base_name="x", lora=LORA)
    with pytest.raises(AdapterBaseMismatch):
        registry.activate(other, model=base)
    with pytest.raises(ConfigError, match="contradicts"):
        registry.activate(v, model=base, base_fingerprint=OTHER_FP)


# --- a model of the semantics, explored by hypothesis -------------------------------------


class RegistryMachine(RuleBasedStateMachine):
    """Save/activate/rollback/deactivate/prune against a plain-Python model of the rules."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._tmp = tempfile.TemporaryDirectory()
        self.registry = AdapterRegistry(Path(self._tmp.name) / "adapters")
        self.present: list[int] = []
        self.active: int | None = None
        self.history: list[int] = []
        self.next = 1

    def teardown(self) -> None:
        self._tmp.cleanup()

    def _target(self) -> int | None:
        for v in reversed(self.history):
            if v != self.active and v in self.present:
                return v
        return None

    @rule()
    def save(self) -> None:
        assert save(self.registry, self.next) == self.next
        self.present.append(self.next)
        self.next += 1

    @precondition(lambda self: self.present)
    @rule(data=st.data())
    def activate(self, data) -> None:
        v = data.draw(st.sampled_from(self.present))
        self.registry.activate(v)
        if self.active is not None and self.active != v:
            self.history.append(self.active)
        self.active = v

    @rule()
    def rollback(self) -> None:
        target = self._target()
        if target is None:
            with pytest.raises(RollbackUnavailable):
                self.registry.rollback()
            return
        assert self.registry.rollback().version == target
        index = len(self.history) - 1 - self.history[::-1].index(target)
        self.history = self.history[:index]
        self.active = target

    @rule()
    def deactivate(self) -> None:
        self.registry.deactivate()
        if self.active is not None:
            self.history.append(self.active)
        self.active = None

    @rule(keep=st.integers(1, 3))
    def prune(self, keep: int) -> None:
        protected = set(self.present[-keep:]) | {self.active, self._target()}
        expected = [v for v in self.present if v not in protected]
        assert self.registry.prune(keep) == expected
        self.present = [v for v in self.present if v in protected]

    @invariant()
    def agrees(self) -> None:
        assert self.registry.versions() == self.present
        assert self.registry.active_version == self.active
        assert self.registry.previous_version == self._target()
        if self.active is not None:
            weights, _ = self.registry.load()
            assert same(weights, weights_for(self.active))


TestRegistryMachine = RegistryMachine.TestCase
TestRegistryMachine.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)


def test_errors_are_adapter_errors():
    for exc in (AdapterCorrupt, InvalidManifest, RollbackUnavailable, AdapterNotFound):
        assert issubclass(exc, AdapterError)
    assert LORA["rank"] == 4


def test_files_are_private_to_the_user(registry):
    import stat

    save(registry, 1)
    registry.activate(1)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(registry.path) == 0o700 and mode(registry.path / "v000001") == 0o700
    assert mode(registry.path / "ACTIVE") == 0o600
    for f in (registry.path / "v000001").iterdir():
        assert mode(f) == 0o600
