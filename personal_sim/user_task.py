"""One simulated user under every arm: the unit of work a backend runs (:func:`run_user`).

A task draws the user (:mod:`personal_sim.population`) and for every arm opens a fresh encrypted
store in a temporary directory, logs day by day, runs the day's round when the trigger fires,
migrates on the update day and measures the served model against the bare base of the day.
Only the library's public API is used.

Arms that go through the same rounds (:meth:`Arm.training <personal_sim.scenario.Arm.training>`:
``dp`` and ``dp+memory``) share one store: it trains once and each arm is measured on it, with
or without personal memory. Arms that part only at the OS update (``dp`` and ``drop``: their
``migration.strategy``) share the days before it, and the store is copied on the update day.
An arm with memory scores every held-out request with what the store recalls for it from what
the user logged so far (held-out requests are never logged):
in ``"cache"`` mode the token cache ``Personalizer.memory_cache`` builds
(:func:`~personal.model.token_cache.evaluate_with_caches`), in ``"context"`` mode the turns
``Personalizer.memory_context`` puts before it (``ChatFormat.encode(..., history=turns)``); its
greedy replies are generated the same way. The bare base it is compared with is memory-free.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (before mlx: the fast BLAS)
from personal.errors import BudgetExhausted, NoEligibleUnits, SeededNoiseWarning
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.chat import History, chat_format
from personal.model.evaluate import evaluate
from personal.model.token_cache import TokenCache, evaluate_with_caches
from personal.model.tokenizer import encode_interaction
from personal.personalizer import Personalizer
from personal.policy import Policy
from personal.privacy.noise import GaussianNoise
from personal.public import public_batches
from personal.store import RawKey
from personal.training.gates import general_loss

from personal_sim.population import User
from personal_sim.public_corpus import Interaction, stream_seed
from personal_sim.public_data import eval_examples, simulation_public_data
from personal_sim.scenario import ARMS, Arm, PassThroughNoise, SimConfig, day_end
from personal_sim.slots import slot_accuracy

_BARE: dict[str, Any] = {}  # per process: bare bases for the "no personalization" reference
_PUBLIC: dict[tuple[str, str | None, int], list[Any]] = {}


def _bare(name: str) -> Any:
    if name not in _BARE:
        _BARE[name] = load_base(name)
    return _BARE[name]


def _public(base: Any, name: str, config: SimConfig) -> list[Any]:
    """The general-loss probe's batches for base ``name`` (held-out public examples)."""
    key = (name, config.public_data, config.public_eval)
    if key not in _PUBLIC:
        examples = eval_examples(config.public_data, config.public_eval)
        _PUBLIC[key] = public_batches(base.tokenizer, examples)
    return _PUBLIC[key]


def _batches(
    tokenizer: Any,
    examples: Sequence[Interaction],
    size: int = 32,
    histories: Sequence[History] | None = None,
) -> list[Any]:
    """Evaluation batches of ``examples``; with ``histories`` (per example, recalled turns)
    each reply is scored given its turns, rendered before the prompt."""
    if histories is None:
        encoded = [encode_interaction(tokenizer, it.prompt, it.response) for it in examples]
    else:
        fmt = chat_format(tokenizer)
        encoded = [
            fmt.encode(it.prompt, it.response, history=turns)
            for it, turns in zip(examples, histories, strict=True)
        ]
    return [
        make_batch([e for e, _ in encoded[i : i + size]], [s for _, s in encoded[i : i + size]])
        for i in range(0, len(encoded), size)
    ]


class _UserRun:
    """The shared parts of one user's task: their data and the bare-base references."""

    def __init__(self, config: SimConfig, index: int, progress: Any) -> None:
        self.config, self.progress = config, progress
        self.user = User.draw(config.seed, index)
        days = config.days
        self.logs = [self.user.day(d, days) for d in range(days)]
        self.held = [self.user.held_out(d, days, config.held_out) for d in range(days)]
        # Held-out requests are never logged, but some repeat an earlier logged request.
        seen = frozenset((it.prompt, it.response) for log in self.logs for _, it in log)
        repeats = sum((it.prompt, it.response) in seen for held in self.held for it in held)
        self.repeat_share = repeats / max(1, sum(len(h) for h in self.held))
        self._bare: dict[tuple[str, int], dict[str, float]] = {}
        self._bare_general: dict[str, float] = {}
        # The served model's general loss by (base, active adapter version) on the current
        # store: it changes only when the adapter does (see open_store).
        self._served_general: dict[tuple[str, int | None], float] = {}
        self._held_batches: dict[tuple[str, int], list[Any]] = {}
        self._bare_slots: dict[tuple[str, int], dict[str, Any]] = {}

    def seed(self, name: str) -> int:
        return stream_seed(self.user.seed, name) >> 1  # 63 bits

    def held_batches(self, name: str, tokenizer: Any, day: int) -> list[Any]:
        key = (name, day)
        if key not in self._held_batches:
            self._held_batches[key] = _batches(tokenizer, self.held[day])
        return self._held_batches[key]

    def bare(self, name: str, day: int) -> dict[str, float]:
        """Held-out personal and general metrics of the bare base ``name`` on ``day``."""
        key = (name, day)
        if key not in self._bare:
            base = _bare(name)
            personal_eval = evaluate(base.model, self.held_batches(name, base.tokenizer, day))
            if name not in self._bare_general:  # the same public set every day
                self._bare_general[name] = general_loss(
                    base.model, _public(base, name, self.config)
                )
            self._bare[key] = {
                "personal_loss": personal_eval.loss,
                "personal_accuracy": personal_eval.accuracy,
                "general_loss": self._bare_general[name],
            }
        return self._bare[key]

    def open_store(self) -> None:
        """A new store starts (an arm group): its adapter versions are its own."""
        self._served_general.clear()

    def served_general(self, p: Personalizer, name: str) -> float:
        """The general loss of ``p``'s served model on base ``name``'s public probe, computed
        once per active adapter version (the weights change only with the version; a
        refused round restores them): on a real base this probe is most of a day's cost."""
        active = p.active_adapter
        key = (name, None if active is None else active.version)
        if key not in self._served_general:
            self._served_general[key] = general_loss(
                p.base.model, _public(p.base, name, self.config)
            )
        return self._served_general[key]

    def recalled(self, p: Personalizer, day: int, mode: str) -> Recall:
        """Per held-out request of ``day``, what personal memory recalls for it from what
        ``p``'s store logged so far, as ``generate(prompt, memory=True, memory_mode=mode)``
        uses it: turns (``"context"``) or a token cache built by the served model
        (``"cache"``)."""
        if mode == "context":
            return [p.memory_context(it.prompt)[0] for it in self.held[day]]
        return [p.memory_cache(it.prompt)[0] for it in self.held[day]]

    def measure(
        self, p: Personalizer, name: str, day: int, recall: Recall | None = None
    ) -> dict[str, float]:
        """The served model (base + active adapter) against the bare base on ``day``;
        with ``recall`` (:meth:`recalled`), served with personal memory."""
        if recall is None:
            personal_eval = evaluate(p.base.model, self.held_batches(name, p.base.tokenizer, day))
        elif _caches(recall):
            exchanges = [(it.prompt, it.response) for it in self.held[day]]
            caches = [r if isinstance(r, TokenCache) else None for r in recall]
            personal_eval = evaluate_with_caches(
                p.base.model, p.base.tokenizer, exchanges, caches, p.cache_settings
            )
        else:
            turns = [r if isinstance(r, list) else [] for r in recall]
            batches = _batches(p.base.tokenizer, self.held[day], histories=turns)
            personal_eval = evaluate(p.base.model, batches)
        general = self.served_general(p, name)
        bare = self.bare(name, day)
        stats = {}
        if recall is not None:  # how much memory recalled for the held-out requests
            sizes = [_recalled_exchanges(r) for r in recall]
            stats = {
                "memory_share": sum(bool(n) for n in sizes) / len(sizes),
                "memory_turns": sum(len(n) for n in sizes) / len(sizes),
            }
        return {
            "personal_loss": personal_eval.loss,
            "personal_accuracy": personal_eval.accuracy,
            "bare_personal_loss": bare["personal_loss"],
            "bare_personal_accuracy": bare["personal_accuracy"],
            "personal_gain": 1.0 - personal_eval.loss / bare["personal_loss"],
            "general_loss": general,
            "bare_general_loss": bare["general_loss"],
            "general_drift": general / bare["general_loss"] - 1.0,
            **stats,
        }

    def slots(
        self, p: Personalizer, name: str, day: int, recall: Recall | None = None
    ) -> dict[str, Any]:
        """Slot accuracy of the served model (with ``recall``: with personal memory) and of
        the bare base (memory-free) on ``day``'s held-out requests (:mod:`personal_sim.slots`).
        """
        key = (name, day)
        if key not in self._bare_slots:
            base = _bare(name)
            self._bare_slots[key] = slot_accuracy(base.model, base.tokenizer, self.held[day])
        memory: dict[str, Any] = {}
        if recall is not None:
            memory = {"histories": recall}
            if _caches(recall):
                memory = {"caches": recall, "cache_settings": p.cache_settings}
        served = slot_accuracy(p.base.model, p.base.tokenizer, self.held[day], **memory)
        bare = self._bare_slots[key]
        extra = {} if recall is None else {"slot_recall": served["slot_recall"]}
        return {
            "slot_accuracy": served["slot_accuracy"],
            "bare_slot_accuracy": bare["slot_accuracy"],
            "slot_requests": served["slot_requests"],
            "slot_by_slot": served["by_slot"],
            "bare_slot_by_slot": bare["by_slot"],
            **extra,
        }

    def tick(self) -> None:
        if self.progress is not None:
            self.progress.put(1)


#: Per held-out request, what memory recalled: turns (``"context"``) or a token cache.
Recall = list[list[tuple[str, str]]] | list[TokenCache | None]


def _caches(recall: Recall) -> bool:
    return any(isinstance(r, TokenCache) for r in recall)


def _recalled_exchanges(item: TokenCache | History | None) -> History:
    if item is None:
        return ()
    return item.sources if isinstance(item, TokenCache) else item


def _epsilon(p: Personalizer) -> float:
    return max(p.ledger.epsilons().values(), default=0.0)


def _round(p: Personalizer, run: _UserRun, arm: Arm, day: int) -> dict[str, Any] | None:
    """The day's round if the trigger fires: what it did, or why it was skipped."""
    now = day_end(day)
    if not p.should_update(now=now):
        return None
    noise_seed = run.seed(f"noise/{day}")
    noise = GaussianNoise(seed=noise_seed) if arm.dp else PassThroughNoise()
    started = time.perf_counter()
    try:
        report = p.update(now=now, noise=noise, sampler_seed=run.seed(f"sampler/{day}"))
    except (BudgetExhausted, NoEligibleUnits) as exc:
        return {"ran": False, "skipped": type(exc).__name__, "reason": str(exc)}
    gates = report.gates or {}
    return {
        "ran": True,
        "round_id": report.round_id,
        "candidates": report.candidates,
        "eligible": report.eligible,
        "excluded": report.excluded,
        "replayed": report.replayed,
        "sample_rate": report.sample_rate,
        "noise_multiplier": report.noise_multiplier,
        "steps": report.steps,
        "clipped_fraction": report.clipped_fraction,
        "clip_norm": report.clip_norm,  # the first step's C (quantile clipping moves it)
        "clip_norm_final": report.clip_norm_final,  # None under a fixed C
        "epsilon_max": report.epsilon_max,
        # The step-size guard (training.step_guard): updates undone, and the share of the
        # learning rate the round ended at (1.0: it never fired).
        "guard_rejections": report.guard_rejections,
        "step_scale": report.step_scale,
        "adapter_version": report.adapter_version,
        "gate": {
            "passed": bool(gates.get("passed")),
            "general_regression": gates.get("general_regression"),
            "personal_gain": gates.get("personal_gain"),
            "held_out_units": gates.get("held_out_units"),
            "reasons": list(gates.get("reasons", [])),
        },
        "seconds": report.seconds,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "peak_memory_bytes": report.peak_memory_bytes,
    }


def _migrate(
    p: Personalizer, run: _UserRun, arm_policy: Policy, day: int, arms: Sequence[Arm] = ()
) -> dict[str, dict[str, Any]]:
    """The OS update: migrate, and measure the gain just before and just after it, for each
    of ``arms`` sharing the store (with memory for a memory arm); by arm name."""
    config = run.config

    def measured(base: str) -> dict[str, dict[str, float]]:
        # A token cache is built by the served model: recalled again after the update.
        modes = {arm.memory_mode for arm in arms if arm.memory}
        recall = {mode: run.recalled(p, day, mode) for mode in modes}
        return {
            arm.name: run.measure(p, base, day, recall[arm.memory_mode] if arm.memory else None)
            for arm in arms
        }

    before = measured(config.base)
    eps_before = p.ledger.epsilons()
    started = time.perf_counter()
    report = p.on_base_update(config.update_base, strategy=arm_policy.migration.strategy)
    wall = round(time.perf_counter() - started, 3)
    after = measured(config.update_base)
    eps_after = p.ledger.epsilons()
    charged = max((v - eps_before.get(u, 0.0) for u, v in eps_after.items()), default=0.0)
    gates = report.gates or {}
    event = {
        "day": day,
        "strategy": report.strategy,
        "from": config.base,
        "to": config.update_base,
        "old_version": report.old_version,
        "new_version": report.new_version,
        "accepted": report.new_version is not None,
        "gate_reasons": list(gates.get("reasons", [])),
        "general_regression": gates.get("general_regression"),
        "distill_steps": report.steps,
        "distill_loss": report.distill_loss,
        "token_level": report.token_level,
        "charged": report.charged,
        "epsilon_charged": max(0.0, charged),
        "seconds": report.seconds,
        "wall_seconds": wall,
    }
    return {
        name: {
            **event,
            "gain_before": before[name]["personal_gain"],
            "gain_after": after[name]["personal_gain"],
            "personal_loss_before": before[name]["personal_loss"],
            "personal_loss_after": after[name]["personal_loss"],
        }
        for name in before
    }


def _run_arms(run: _UserRun, arms: Sequence[Arm], home: Path) -> dict[str, dict[str, Any]]:
    """``arms`` (the same :meth:`Arm.before_update`) on one store: rounds, migration and
    logging once, each arm measured with or without memory; by arm name.

    Arms that part only at the OS update (their ``migration.strategy``: ``dp`` and ``drop``)
    share the days before it; on the update day the store is copied, one copy per strategy,
    and each copy goes on alone (the same seeds as a run of its own: the same rounds).
    """
    config = run.config
    lead_policy = arms[0].policy(config.base_policy())
    days: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
    migration: dict[str, dict[str, Any]] = {}
    key = RawKey(os.urandom(32))
    started = time.perf_counter()
    public = simulation_public_data(config.public_data)  # passed in, like any app's
    memory = any(arm.memory for arm in arms)

    def opened(path: Path, create: bool) -> Personalizer:
        return Personalizer.open(
            path, config.base, lead_policy, key, create=create, seed=run.seed("replay"),
            public_data=public, memory=memory,
        )  # fmt: skip

    forks: dict[str, list[Arm]] = {}
    for arm in arms:
        forks.setdefault(arm.policy(config.base_policy()).migration.strategy, []).append(arm)
    split = config.update_day if config.has_update and len(forks) > 1 else config.days
    run.open_store()
    with opened(home, True) as p:
        logged = _live_days(p, run, arms, range(split), days, migration, 0)
    if split < config.days:
        for index, fork in enumerate(forks.values()):
            copy = home.with_name(f"{home.name}-{index}")
            shutil.copytree(home, copy)
            run.open_store()
            with opened(copy, False) as p:
                _live_days(p, run, fork, range(split, config.days), days, migration, logged)
    seconds = round(time.perf_counter() - started, 3)
    return {
        arm.name: {
            "arm": arm.name,
            "policy_digest": arm.policy(config.base_policy()).digest(),
            "memory": arm.memory,
            "train": arm.train,
            "days": days[arm.name],
            "migration": migration.get(arm.name),
            "seconds": seconds,
        }
        for arm in arms
    }


def _live_days(
    p: Personalizer,
    run: _UserRun,
    arms: Sequence[Arm],
    span: range,
    days: dict[str, list[dict[str, Any]]],
    migration: dict[str, dict[str, Any]],
    logged: int,
) -> int:
    """The days ``span`` of ``arms`` on the store ``p``: log, the day's round, the update,
    each arm's measures appended to ``days``; returns the count logged by the end."""
    config, lead = run.config, arms[0]
    policy = lead.policy(config.base_policy())
    budget = policy.privacy.lifetime_epsilon
    for day in span:
        if config.has_update and day == config.update_day:
            migration.update(_migrate(p, run, policy, day, arms))
        for ts, it in run.logs[day]:
            p.log(it.prompt, it.response, ts=ts)
        logged += len(run.logs[day])
        round_ = _round(p, run, lead, day) if lead.train else None
        active = p.active_adapter
        modes = {arm.memory_mode for arm in arms if arm.memory}
        recall = {mode: run.recalled(p, day, mode) for mode in modes}
        measured: dict[str | None, dict[str, Any]] = {}  # arms alike in memory: measured once
        for arm in arms:
            mode = arm.memory_mode if arm.memory else None
            if mode not in measured:
                turns = recall[mode] if mode is not None else None
                measured[mode] = run.measure(p, config.base_on(day), day, turns)
                if day == config.days - 1:  # greedy replies: on the last day only
                    measured[mode].update(run.slots(p, config.base_on(day), day, turns))
            days[arm.name].append({
                "day": day,
                "base": config.base_on(day),
                "logged": len(run.logs[day]),
                "logged_total": logged,
                "round": round_,
                "active_version": active.version if active else None,
                "epsilon": _epsilon(p),
                "epsilon_budget": budget,
                **measured[mode],
            })  # fmt: skip
            run.tick()
    return logged


def _run_arm(run: _UserRun, arm: Arm, home: Path) -> dict[str, Any]:
    """One arm on its own store."""
    return _run_arms(run, [arm], home)[arm.name]


def _shared(arms: Sequence[Arm]) -> list[list[Arm]]:
    """``arms`` grouped by :meth:`Arm.before_update` (in order of first appearance)."""
    groups: dict[tuple[bool, bool, str], list[Arm]] = {}
    for arm in arms:
        groups.setdefault(arm.before_update(), []).append(arm)
    return list(groups.values())


def run_user(config: SimConfig, index: int, progress: Any = None) -> dict[str, Any]:
    """Simulate user ``index`` under every arm of ``config`` (the unit of work of a backend).

    ``progress``: anything with ``put(1)`` (a queue), called after each simulated day and arm.
    """
    started = time.perf_counter()
    run = _UserRun(config, index, progress)
    arms: dict[str, Any] = {}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="personal-sim-") as tmp:
        # Seeded noise is the point here (reproducible metrics); the report says it is not DP.
        warnings.simplefilter("ignore", SeededNoiseWarning)
        for group in _shared([ARMS[name] for name in config.arms]):
            arms.update(_run_arms(run, group, Path(tmp) / group[0].name))
    used = [config.base, *([config.update_base] if config.has_update else [])]
    bases = {name: _bare(name).fingerprint for name in used}
    return {
        "user": index,
        "profile": run.user.describe(),
        "logged": [len(log) for log in run.logs],
        "held_out_repeat_share": run.repeat_share,
        "base_fingerprints": bases,
        "arms": {name: arms[name] for name in config.arms},
        "seconds": round(time.perf_counter() - started, 3),
    }
