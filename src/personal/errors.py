"""The one exception hierarchy of `personal`.

Every error the library raises on bad input is a :class:`PersonalError`. Catch the narrow
subclass you can handle; catch ``PersonalError`` at an app boundary. Each message says what is
wrong *and* what to do about it, because the people reading it (app developers, privacy
reviewers) usually cannot read the code that raised it.
"""

from __future__ import annotations


class PersonalError(Exception):
    """Base class of every error `personal` raises on purpose."""


class PersonalWarning(UserWarning):
    """Base class of every warning `personal` emits."""


class SlowBLASWarning(PersonalWarning):
    """MLX runs on the reference BLAS: training will be 10-40x slower than it should be."""


class SlowKernelsWarning(PersonalWarning):
    """The fast CPU kernels (:mod:`personal.kernels`) are unavailable: softmax, logsumexp and
    sigmoid run on MLX's own CPU ops: training steps about 1.6x slower (docs/performance.md)."""


class SeededNoiseWarning(PersonalWarning):
    """A deterministic (seeded) noise or sampling source is in use: tests only, never private."""


# --- configuration ---------------------------------------------------------------------------


class ConfigError(PersonalError):
    """A configuration value (LoRA config, policy, CLI option) is invalid."""


class PolicyError(ConfigError):
    """A policy file or value is malformed or out of range."""


class LifetimeContractFixed(PolicyError):
    """A policy would change a store's lifetime contract (ε, δ, unit, accountant) after the
    ledger has recorded a round under it; the contract lives in the ledger's genesis entry."""


class PublicDataError(ConfigError):
    """Public data (a JSONL file, a self-generated set) is malformed, empty or unusable."""


class KernelBuildError(ConfigError):
    """The fast CPU kernels could not be built here (no compiler, nanobind missing, a compiler
    error); `personal` then runs MLX's own ops and says so with :class:`SlowKernelsWarning`."""


# --- base models -----------------------------------------------------------------------------


class ModelError(PersonalError):
    """A base model cannot be loaded or used."""


class ModelNotFound(ModelError):
    """No model directory (or bundled model) exists under the given name."""


class IncompleteModel(ModelError):
    """The model directory lacks a required file, or its weights lack parameters."""


class CorruptWeights(ModelError):
    """A weights file cannot be parsed or its tensors do not fit the architecture."""


class UnsupportedArchitecture(ModelError):
    """The config's ``model_type`` is not one `personal` (through mlx-lm) can build."""


class TokenizerMismatch(ModelError):
    """The tokenizer does not fit the model (vocabulary larger than the embedding, ...)."""


class ModelExists(ModelError):
    """A model directory to be written (an import's destination) already exists."""


class UnsupportedQuantization(ModelError):
    """A weights file uses a tensor type (GGUF K-quants, IQ types, ...) that cannot be read."""


class UnsupportedTokenizer(ModelError):
    """A model file's tokenizer is of a kind `personal` cannot rebuild (SentencePiece GGUF, ...)."""


class MissingChatTemplate(ModelError):
    """The model carries no chat template and none was given (a base, not an instruct, model?)."""


class NoChatFormat(TokenizerMismatch):
    """The tokenizer has no usable chat format: no chat template and no end-of-sequence token,
    or a template whose generation prompt does not begin a rendered exchange."""


# --- adapters --------------------------------------------------------------------------------


class AdapterError(PersonalError):
    """A LoRA adapter cannot be injected, swapped, saved or loaded."""


class AdapterMismatch(AdapterError):
    """Adapter weights do not fit the live model (names, shapes, or base fingerprint)."""


class NoLoRALayers(AdapterError):
    """The operation needs LoRA layers but the model has none (call ``inject_lora`` first)."""


class AdapterBaseMismatch(AdapterMismatch):
    """The adapter was trained on another base model (its base fingerprint differs)."""


class PopulationAdapterMismatch(AdapterBaseMismatch):
    """A base's public population adapter was built for another base (fingerprint) or another
    LoRA shape than the policy's ``training.lora``: it cannot be the warm start."""


class AdapterBankMismatch(PopulationAdapterMismatch):
    """The policy trains on an adapter bank (``training.update = "bank"``) that the base does
    not ship, or one built for another base or LoRA shape."""


class AdapterNotFound(AdapterError):
    """No adapter version (or no active version) exists where one was asked for."""


class AdapterCorrupt(AdapterError):
    """A saved adapter's weights fail their SHA-256, do not parse, or contradict its manifest."""


class InvalidManifest(AdapterCorrupt):
    """An adapter manifest (or the registry's active pointer) is malformed or inconsistent."""


class AdapterFormatTooNew(AdapterError):
    """The adapter or registry was written by a newer version of `personal` than this one."""


class RollbackUnavailable(AdapterError):
    """There is no earlier activated version left to roll back to."""


# --- encrypted store -------------------------------------------------------------------------


class StoreError(PersonalError):
    """The encrypted interaction store cannot be created, opened, read or written."""


class StoreNotFound(StoreError):
    """No store exists at the given path."""


class StoreExists(StoreError):
    """A store already exists where a new one was to be created."""


class WrongKey(StoreError):
    """The key (passphrase, keyring entry, raw key) does not open this store."""


class TamperDetected(StoreError):
    """A sealed record or ledger entry failed authentication: it was modified or moved."""


class StoreCorrupt(StoreError):
    """The database file is truncated or fails SQLite's integrity check."""


class SchemaTooNew(StoreError):
    """The store was written by a newer version of `personal` than this one."""


class RecordNotFound(StoreError):
    """No record with the given id exists (it may have been erased)."""


class KeyProviderError(StoreError):
    """The key provider (keyring, key file, prompt) cannot supply a key."""


class DiskFull(StoreError):
    """The disk (or the process's file-size limit) filled up during a write; it was rolled back."""


class InvalidInteraction(StoreError):
    """An interaction to append or import is malformed (missing field, wrong type, bad time)."""


class MemoryIndexDamaged(StoreError):
    """The memory index fails verification: a row was modified, copied from another row or
    store, is missing for a record, or belongs to no record. It is derived from the records, so
    nothing is lost: ``personal memory rebuild STORE`` rebuilds it."""


# --- privacy ---------------------------------------------------------------------------------


class PrivacyError(PersonalError):
    """A privacy invariant would be violated; the operation was refused."""


class BudgetExhausted(PrivacyError):
    """No unit has enough privacy budget left for the requested round."""


class LedgerIntegrityError(PrivacyError):
    """The privacy ledger's hash chain is broken or was rolled back; training is refused."""


class LedgerRollback(LedgerIntegrityError):
    """The ledger in the database is older than its anchor (a backup of it was restored)."""


class LedgerAnchorMissing(LedgerIntegrityError):
    """The ledger's anchor (its chain head kept outside the database) is gone."""


class UnitOfPrivacyMismatch(PrivacyError):
    """Unit ids do not have the shape the store's unit of privacy promises (under ``day``, a
    unit that is not the date of its interactions); nothing was charged."""


class NoEligibleUnits(PrivacyError):
    """A round was proposed over no units at all (nothing logged yet, or none selected)."""


class TooFewNewUnits(NoEligibleUnits):
    """Fewer new units than the policy's ``training.min_new_units``: a round on so few would
    spend their budget on an update that is mostly noise, so it does not run (nothing was
    charged). Log more interactions first."""


class UnitOverBudget(PrivacyError):
    """A round would charge a unit past its lifetime budget (charge only selected units)."""


class SamplerMismatch(PrivacyError):
    """A round's sampler is not the one its charge was computed for (Poisson at rate q)."""


class RoundNotOpen(PrivacyError):
    """A ledger round to finish is unknown or already finished."""


class PrivacyParameterError(PrivacyError):
    """A privacy parameter (ε, δ, σ, sampling rate, steps, RDP curve) is out of range."""


class AccountantNotApplicable(PrivacyParameterError):
    """The chosen accountant cannot evaluate this schedule (PRV: grid too large, δ too small)."""


class UnreachablePrivacyTarget(PrivacyError):
    """No noise multiplier reaches the target (ε, δ) for this sampling rate and step count."""


class PrivacyStateError(PrivacyError):
    """A saved accountant or filter state is malformed, inconsistent or from another grid."""


# --- training --------------------------------------------------------------------------------


class TrainingError(PersonalError):
    """A personalization round could not run or finish."""


class StoreBaseMismatch(TrainingError):
    """The base model is not the one the store's adapters and ledger are on (after a migration,
    train on the new base; to move to another base, migrate)."""


class MigrationInterrupted(TrainingError):
    """A base-model migration of this store was interrupted; the message names the command
    that finishes it."""


class RoundInProgress(TrainingError):
    """Another process is running a round on this store (one round at a time per store)."""
