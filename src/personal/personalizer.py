"""The app-facing facade: log interactions, run private training rounds, answer through the adapter.

::

    from personal import Personalizer, Passphrase

    with Personalizer.open("~/.assistant/store", "base-v1", "default",
                           Passphrase("correct horse ..."), create=True) as p:
        p.log("remind me to call Ana at 6", "Reminder set: call Ana at 6 pm.")
        if p.should_update():
            report = p.update()          # one DP round, charged to the ledger first
        print(p.generate("remind me to call Ana").text)

One store binds one lifetime contract (ε, δ, unit of privacy, accountant) in its privacy ledger's
genesis entry; once a round is recorded, a policy that tries to change it is refused
(:class:`~personal.errors.LifetimeContractFixed`), since raising a lifetime budget after the fact
would void the guarantee already stated for old data.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

from personal.adapters.artifact import Manifest
from personal.adapters.migrate import MigrationReport
from personal.adapters.population import PopulationAdapter
from personal.adapters.registry import AdapterRegistry
from personal.errors import ConfigError, InvalidInteraction, UnitOfPrivacyMismatch
from personal.memory import (
    DEFAULT_K,
    Memory,
    MemoryMode,
    Recalled,
    check_memory_mode,
    clip,
    default_k,
    memory_turns,
)
from personal.model.base import BaseModel, load_base
from personal.model.chat import chat_format
from personal.model.generate import Generation, generate
from personal.model.lora import inject_lora
from personal.model.token_cache import (
    CacheSettings,
    ReplyRows,
    TokenCache,
    supports_token_cache,
)
from personal.policy import Policy, load_policy
from personal.privacy.contract import Contract
from personal.privacy.ledger import Ledger
from personal.privacy.noise import GaussianNoise
from personal.public import PublicData, PublicSource, public_source
from personal.store import InteractionLog, KeyProvider, Store
from personal.store.layout import MARKER_NAME
from personal.store.records import parse_time
from personal.store.settings import StoreSettings
from personal.training.continual import ContinualState
from personal.training.migration import Migrator, pending_migration
from personal.training.round import Progress, RoundPlan, RoundReport
from personal.training.runner import RoundRunner


class Personalizer:
    """A store, its privacy ledger and adapter registry, and the live base model with LoRA.

    Open it with :meth:`open`; close it (or use ``with``). Not thread-safe: one per process.

    A thin facade: :attr:`rounds` (a :class:`~personal.training.runner.RoundRunner`) runs the
    private training rounds on the live base, :attr:`migrator` (a
    :class:`~personal.training.migration.Migrator`) moves the store to a new base, and
    :attr:`interactions` is the store's encrypted interaction log.
    """

    def __init__(
        self,
        interactions: InteractionLog,
        ledger: Ledger,
        registry: AdapterRegistry,
        base: BaseModel,
        policy: Policy,
        settings: StoreSettings,
        *,
        seed: int | None = None,
        public: PublicSource | None = None,
        memory: bool | int | None = None,
        memory_mode: MemoryMode = "cache",
    ) -> None:
        self.interactions, self.ledger, self.registry = interactions, ledger, registry
        self.memory_mode: MemoryMode = check_memory_mode(memory_mode)
        self.memory_default: bool | int | None = (
            None if memory is None else _memory_option(memory, "memory")
        )
        self.cache_settings = CacheSettings()
        self._memory: Memory | None = None
        self._reply_rows = ReplyRows()  # token-cache rows of recently recalled exchanges
        self.settings, self.policy = settings, policy
        self.public_source = public_source(public)
        self.store: Store = interactions.store
        continual = ContinualState(interactions, settings, policy, seed=seed)
        self.rounds = RoundRunner(
            interactions, ledger, registry, base, policy, settings, continual, self.public_source
        )
        self.migrator = Migrator(self.rounds, registry, ledger, policy, settings, self.store.path)
        self._closed = False

    @property
    def base(self) -> BaseModel:
        """The live base model, LoRA injected (:meth:`on_base_update` replaces it)."""
        return self.rounds.base

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        store: str | Path,
        base: str | Path | BaseModel,
        policy: str | Path | Policy | None,
        key: KeyProvider,
        *,
        create: bool = False,
        seed: int | None = None,
        public_data: PublicSource | str | Path | None = None,
        memory: bool | int | None = None,
        memory_mode: MemoryMode = "cache",
    ) -> Personalizer:
        """Open (or with ``create=True`` create) the store at ``store`` for ``base``.

        Args:
            store: the store directory.
            base: a bundled name (``"base-v1"``), a model directory, or a loaded base.
            policy: a bundled policy name, a TOML file, a :class:`Policy`, or ``None`` for the
                one recorded in the store (else ``"default"``).
            key: the key provider of the store.
            create: create the store when it does not exist yet.
            seed: simulations and tests only: seeds the replay buffer's draws (warns with
                :class:`~personal.errors.SeededNoiseWarning`); pass ``noise=`` and
                ``sampler_seed=`` to :meth:`update` for fully reproducible rounds.
            public_data: the public (non-personal) text for the general-loss gate, public
                replay, distillation to the base, the public Fisher and migration prompts: a
                :class:`~personal.public.PublicData`, a JSONL file, or any
                :class:`~personal.public.PublicSource`. Default: the base's own answers to the
                bundled generic prompts (:class:`~personal.public.SelfGenerated`, generated once
                per base and cached). Pass the same data every time a store is opened.
            memory: the default of :meth:`generate`'s ``memory``: ``None`` (the default: on,
                in ``memory_mode``, when the base supports it, see :attr:`memory_on`; the index
                is built at the first generation), ``True`` (recall the mode's default number
                of past interactions, :func:`~personal.memory.default_k`; the index is built
                now if the store keeps none), a number to recall, or ``False`` (off: no index
                is built).
            memory_mode: how a generation uses what memory recalls: ``"cache"`` (the default:
                a token cache mixed into every next-token distribution,
                :mod:`personal.model.token_cache`) or ``"context"`` (earlier chat turns before
                the request, for bases trained on multi-turn chats). docs/memory.md has the
                measurements.

        Raises:
            PublicDataError: ``public_data`` is a malformed file (nothing was opened).
            LifetimeContractFixed: the policy would change the lifetime contract the store's
                ledger binds (ε, δ, unit, accountant) after a round was recorded.
            PopulationAdapterMismatch: the policy's ``training.warm_start = "population"``,
                and the base's population adapter was built for another base or LoRA shape.
            WrongKey, StoreNotFound, LedgerRollback, ...: see the store and ledger.
        """
        path = Path(store).expanduser()
        public = public_source(public_data)  # a bad file fails before the store is touched
        settings_policy = policy if isinstance(policy, Policy) else None
        if policy is not None and settings_policy is None:
            settings_policy = load_policy(policy)
        sync = settings_policy.store.synchronous if settings_policy else "FULL"
        created = create and not (path / MARKER_NAME).exists()
        before = {c.name for c in path.iterdir()} if path.is_dir() else None
        if created:
            log = InteractionLog.create(path, key, synchronous=sync)
        else:
            log = InteractionLog.open(path, key, synchronous=sync)
        try:
            settings = StoreSettings(log.store)
            bound = _bind_policy(settings, settings_policy)
            log.unit_by = bound.privacy.unit  # type: ignore[assignment]  # validated
            _check_units(log, bound.privacy.unit)
            # The ledger, not the settings row, binds the contract: it refuses another one.
            ledger = Ledger.open(log.store, Contract.of_policy(bound))
            if settings.get("policy") != bound.to_dict():
                settings.set("policy", bound.to_dict())  # the default of later commands
            loaded = base if isinstance(base, BaseModel) else load_base(base)
            inject_lora(loaded.model, bound.training.lora.to_lora_config())
            _record_base(settings, loaded, base)
            registry = AdapterRegistry.for_store(path)
            personalizer = cls(
                log,
                ledger,
                registry,
                loaded,
                bound,
                settings,
                seed=seed,
                public=public,
                memory=memory,
                memory_mode=memory_mode,
            )
            personalizer.rounds.load_active()
            if personalizer.memory_default:  # asked for: build (first time) and load it now
                personalizer.memory.refresh()
        except BaseException:
            log.close()
            if created:  # a failed create (a wrong base name, say) leaves nothing behind
                _remove_new_store(path, before)
            raise
        return personalizer

    def close(self) -> None:
        """Close the store (idempotent)."""
        if not self._closed:
            self._closed = True
            self._memory = None  # the decrypted index goes with the store
            self._reply_rows.clear()  # and so do the rows derived from recalled records
            self.interactions.close()

    def __enter__(self) -> Personalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- logging and serving -------------------------------------------------------------------

    def log(self, prompt: str, response: str, **fields: Any) -> int:
        """Append one interaction (fields as in :class:`~personal.store.Interaction`).

        ``ts`` takes the forms ``personal import`` takes: a ``datetime``, a ``date``, ISO 8601
        text (``"2024-05-01T10:00:00Z"``) or unix seconds. Log each exchange once: every call
        is a new privacy unit under ``unit = "interaction"``.

        Raises:
            InvalidInteraction: an empty (or blank) prompt or response: there is nothing to
                learn, and it would still be charged as a unit.
        """
        for name, text in (("prompt", prompt), ("response", response)):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInteraction(
                    f"the {name} is empty: log only exchanges with a prompt and a response "
                    "(nothing was written)"
                )
        if fields.get("ts") is not None:
            fields["ts"] = parse_time(fields["ts"], "ts")
        return self.interactions.append(prompt, response, **fields)

    def budget(self) -> dict[str, Any]:
        """The privacy budget left, summarised over units (no unit ids).

        ``{"lifetime_epsilon", "delta", "unit", "filter", "units", "spent_max", "spent_median",
        "remaining_min", "remaining_median", "excluded_next_round"}``: ε per unit from the ledger's
        filter; ``remaining_*`` are ``lifetime_epsilon - spent``; ``excluded_next_round`` counts the
        units the next round (the policy's q, σ and steps over the logged units) would leave out
        as too costly for their remaining budget. Units never charged have spent 0.
        """
        return self.rounds.budget()

    def generate(
        self,
        prompt: str,
        *,
        memory: bool | int | None = None,
        memory_mode: MemoryMode | None = None,
        **options: Any,
    ) -> Generation:
        """Answer ``prompt`` through the active adapter, with its confidence signal.

        Args:
            prompt: the user's request.
            memory: recall the past interactions of this store most relevant to ``prompt``:
                ``True`` (the mode's :func:`~personal.memory.default_k`), a number to recall,
                ``False``; ``None`` (default): what :meth:`open` was given (on by default:
                :attr:`memory_on`). Memory charges no privacy budget, but the reply may quote
                what it recalls and is not a DP output (docs/memory.md). The result's
                ``memory_ids`` names the interactions used.
            memory_mode: ``"cache"`` (the recalled replies as a token cache,
                :meth:`memory_cache`) or ``"context"`` (as earlier chat turns,
                :meth:`memory_context`); ``None``: what :meth:`open` was given.
            options: :func:`~personal.model.generate.generate`'s (``max_tokens``,
                ``temperature``, ``seed``).
        """
        mode = self.memory_mode if memory_mode is None else check_memory_mode(memory_mode)
        if memory is None:
            memory = self.memory_on if self.memory_default is None else self.memory_default
        k = _memory_k(memory, "memory", mode)
        model, tokenizer = self.base.model, self.base.tokenizer
        if not k:
            return generate(model, tokenizer, prompt, **options)
        if mode == "context":
            history, ids = self.memory_context(prompt, k)
            reply = generate(model, tokenizer, prompt, history=history, **options)
        else:
            cache, ids = self.memory_cache(prompt, k)
            reply = generate(
                model,
                tokenizer,
                prompt,
                token_cache=cache,
                cache_settings=self.cache_settings,
                **options,
            )
        return dataclasses.replace(reply, memory_ids=tuple(ids))

    @property
    def memory_on(self) -> bool:
        """Whether :meth:`generate` uses personal memory when not told: what :meth:`open`'s
        ``memory`` said, else on when the base can serve ``memory_mode`` (every base in
        ``"context"`` mode; in ``"cache"`` mode, a base whose output head splits off its final
        hidden states: :func:`~personal.model.token_cache.supports_token_cache`). On by
        default because it measurably helps (docs/memory.md: held-out loss −13 %, slot
        accuracy +27 points on the simulator's users)."""
        if self.memory_default is not None:
            return bool(self.memory_default)
        return self.memory_mode == "context" or supports_token_cache(self.base.model)

    @property
    def memory(self) -> Memory:
        """The store's personal memory (its sealed index is built on first use)."""
        if self._memory is None:
            self._memory = Memory.open(self.interactions)
        return self._memory

    def recall(self, prompt: str, k: int = DEFAULT_K) -> list[Recalled]:
        """The ``k`` past interactions most relevant to ``prompt``, best first."""
        return self.memory.recall(prompt, k)

    def memory_context(
        self, prompt: str, k: int = DEFAULT_K
    ) -> tuple[list[tuple[str, str]], list[int]]:
        """What :meth:`generate` puts before ``prompt`` with memory on: ``(turns, ids)``,
        the recalled ``(prompt, response)`` turns (least relevant first, each cut to
        :data:`~personal.memory.MAX_CHARS` characters, together at most
        :data:`~personal.memory.MAX_MEMORY_TOKENS` tokens) and their record ids. A simulation
        scores replies with the same turns (``ChatFormat.encode(..., history=turns)``)."""
        fmt = chat_format(self.base.tokenizer)
        alone = len(fmt.prompt_ids(prompt))
        return memory_turns(
            self.recall(prompt, k), lambda turns: len(fmt.prompt_ids(prompt, turns)) - alone
        )

    def memory_cache(
        self, prompt: str, k: int | None = None
    ) -> tuple[TokenCache | None, list[int]]:
        """What :meth:`generate` mixes into its next-token distributions with memory on in
        ``"cache"`` mode: ``(cache, ids)``, a :class:`~personal.model.token_cache.TokenCache`
        of the ``k`` recalled interactions (default :data:`~personal.memory.CACHE_K`; each cut
        to :data:`~personal.memory.MAX_CHARS` characters) run through the served model (base
        and active adapter), and their record ids, least relevant first. ``(None, [])`` when
        nothing was recalled. A simulation scores replies with the same cache
        (:func:`~personal.model.token_cache.evaluate_with_caches`). The rows of an exchange
        recalled again are reused while the served model's weights are unchanged
        (:class:`~personal.model.token_cache.ReplyRows`, in RAM, dropped by :meth:`close`)."""
        recalled = self.recall(prompt, default_k("cache") if k is None else k)[::-1]
        exchanges = [(clip(r.prompt), clip(r.response)) for r in recalled]
        cache = TokenCache.build(
            self.base.model, self.base.tokenizer, exchanges, rows=self._reply_rows
        )
        return cache, [r.id for r in recalled]

    @property
    def active_adapter(self) -> Manifest | None:
        """The active adapter's manifest, or ``None`` (serving the bare base, or the warm
        start: :attr:`warm_start`)."""
        return self.rounds.active_adapter

    @property
    def reply_rows(self) -> ReplyRows:
        """The token cache's rows of recently recalled exchanges, kept in RAM between
        requests while the served weights are unchanged (dropped on close)."""
        return self._reply_rows

    @property
    def warm_start(self) -> PopulationAdapter | None:
        """The base's public population adapter, served while :attr:`active_adapter` is
        ``None`` and the start of the first round, under ``training.warm_start =
        "population"`` (``None``: not asked for, or the base ships none). Public: it charges
        nothing (docs/privacy.md)."""
        return self.rounds.warm_start

    # --- training ------------------------------------------------------------------------------

    def should_update(self, *, now: datetime | None = None) -> bool:
        """Whether the policy's trigger fires: enough new units, and rounds left today.

        ``now`` (default: the UTC clock) lets a simulation run on simulated days.
        """
        return self.rounds.should_update(now)

    def round_plan(self, candidates: int | None = None) -> RoundPlan:
        """A round's public parameters from the policy (σ calibrated if needed).

        ``candidates``: how many units the round draws from. Default: the next round's own
        draw (new units plus replayed ones, less the held-out set), which :meth:`update` then
        uses if nothing was logged or trained in between, so the plan's σ and q are the ones
        the round runs at.
        """
        return self.rounds.plan(candidates)

    def round_context(self) -> dict[str, Any]:
        """What the ledger records with a round: base, accountant, adapter, policy."""
        return self.rounds.context()

    def update(
        self,
        *,
        progress: Progress | None = None,
        now: datetime | None = None,
        noise: GaussianNoise | None = None,
        sampler_seed: int | None = None,
    ) -> RoundReport:
        """One DP round; the new adapter is activated only if the gates pass.

        Holds the store's round lock (:class:`RoundInProgress` if another process has it). On
        any failure, or when a gate fails, the live model goes back to the previous adapter.

        Args:
            progress: called with ``(step, report)`` after each DP-SGD step.
            now: the round's day for the trigger's count (default: the UTC clock).
            noise: tests and simulations only: a seeded noise source (warns with
                :class:`~personal.errors.SeededNoiseWarning`); ``None`` draws from the CSPRNG.
            sampler_seed: tests and simulations only: seeds the sampling and hold-out coins;
                ``None`` uses the CSPRNG.

        Raises:
            NoEligibleUnits, BudgetExhausted: nothing to train on (nothing charged).
            TooFewNewUnits: fewer new units than ``training.min_new_units`` (nothing charged).
            RoundInProgress: another process is training this store.
            StoreBaseMismatch: the live base is not the store's (nothing charged).
            MigrationInterrupted: a migration must be finished first (nothing charged).
            DiskFull: the disk filled up; the message names the rounds already charged.
        """
        return self.rounds.run(progress=progress, now=now, noise=noise, sampler_seed=sampler_seed)

    def public_data(self) -> PublicData:
        """The public data for the live base (self-generated ones are made on first use)."""
        return self.rounds.public_data()

    # --- base-model updates --------------------------------------------------------------------

    def on_base_update(
        self,
        new_base: str | Path | BaseModel,
        *,
        strategy: str | None = None,
        noise: GaussianNoise | None = None,
        sampler_seed: int | None = None,
    ) -> MigrationReport:
        """Move to ``new_base`` (an OS update shipped it), carrying the personalization over.

        The old adapter is never served on the new base: from the moment this is called the
        new base answers bare (or with its own population adapter under ``training.warm_start
        = "population"``, which is then where a distilled or retrained adapter starts), until
        a migrated adapter passes the gates.

        Strategies (default: the policy's ``migration.strategy``):
            ``distill``: the old base + active adapter teach a fresh LoRA on the new base on
                the public data's migration prompts and its own generated text: no private
                record is read, the ledger records a zero charge and why.
            ``retrain``: a DP round over the store's units, charged as usual but each unit
            spending at most ``migration.retrain_budget_share`` of its remaining budget.
            ``both``: distill, then a DP retrain round.
            ``drop``: start over with no adapter.

        ``noise`` and ``sampler_seed`` reach the retrain round, as in :meth:`update` (tests
        and simulations only).

        Raises:
            RoundInProgress: another process is training this store.
            ConfigError: an unknown strategy.
            MigrationInterrupted: another migration was interrupted; the message says how to
                finish it.
            StoreBaseMismatch: this personalizer's base is not the store's.
        """
        return self.migrator.migrate(
            new_base, strategy=strategy, noise=noise, sampler_seed=sampler_seed
        )

    def pending_migration(self) -> dict[str, Any] | None:
        """The record of an interrupted migration (``None`` when the last one finished)."""
        return pending_migration(self.settings)


def _memory_option(memory: object, name: str) -> bool | int:
    """``memory`` checked: ``True``, ``False`` or a number of interactions >= 0."""
    if isinstance(memory, bool) or (isinstance(memory, int) and memory >= 0):
        return memory
    raise ConfigError(
        f"{name} must be True, False or a number of interactions >= 0, not {memory!r}"
    )


def _memory_k(memory: object, name: str, mode: MemoryMode) -> int:
    """How many interactions a ``memory`` option recalls in ``mode`` (0: off)."""
    option = _memory_option(memory, name)
    if option is True:
        return default_k(mode)
    return int(option)


def _remove_new_store(path: Path, before: set[str] | None) -> None:
    """Remove what a failed ``open(create=True)`` made: the directory if it made it, else only
    the entries that were not there before."""
    import shutil

    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        if child.name not in before:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _record_base(settings: StoreSettings, loaded: BaseModel, source: object) -> None:
    """Remember which base the store serves (``personal migrate`` finds the teacher by it).

    A store opened on another base than the recorded one keeps the record: the recorded base
    still owns the active adapter until :meth:`Personalizer.on_base_update` moves it.
    """
    recorded = settings.get("base")
    if recorded is None or recorded.get("fingerprint") == loaded.fingerprint:
        where = str(loaded.path) if isinstance(source, BaseModel) else str(source)
        settings.set(
            "base", {"fingerprint": loaded.fingerprint, "name": loaded.name, "source": where}
        )


def _check_units(log: InteractionLog, unit: str) -> None:
    """Refuse a unit of privacy the store's records were not logged under (cleartext check)."""
    misfits = log.misfit_count(unit)  # type: ignore[arg-type]  # a validated policy unit
    if misfits:
        raise UnitOfPrivacyMismatch(
            f"{misfits} interaction(s) in this store were logged under another unit of privacy "
            f"than the policy's {unit!r} (e.g. imported before the store's policy was recorded), "
            f"so training would charge them as the wrong units and the audit's claim would be "
            "false. Train under a policy whose privacy.unit matches how they were logged, or "
            "import them into a new store created with `personal init STORE --policy P` "
            "(nothing was charged)"
        )


def _bind_policy(settings: StoreSettings, policy: Policy | None) -> Policy:
    """The policy to open with: ``policy``, else the store's recorded one, else ``default``.

    Whether it may change the lifetime contract is the ledger's decision (:meth:`Ledger.open`),
    so nothing is recorded here: a policy the ledger refuses never becomes the store's default.
    """
    if policy is not None:
        return policy
    recorded = settings.get("policy")
    return Policy.from_dict(recorded, source="the store") if recorded else load_policy("default")
