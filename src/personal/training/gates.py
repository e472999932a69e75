"""Quality gates: a new adapter goes live only if it forgets little and helps the user.

Two measurements, both decided *before* the adapter is activated:

* **General regression** (free): the relative rise of the loss on the public data's held-out
  ``gate`` split (:mod:`personal.public`: by default the base's own answers to generic prompts,
  so the gate measures drift from the base's behaviour). Public data costs no privacy.
* **Personal gain** (charged): the mean, over *held-out units* of this round, of each unit's
  relative loss drop, clipped to [-1, 1], plus Gaussian noise. Held-out units are chosen by
  CSPRNG coins among the round's candidates and are not trained on in that round. Under
  add/remove of one unit the clipped sum moves by at most 1, so adding N(0, σ_v²) to the sum is
  the Gaussian mechanism with sensitivity 1 -- charged to every held-out unit in the ledger as a
  round of purpose ``validation`` (q = 1, one step, σ_v) *before* any of them is decrypted. The
  number of held-out units divides the sum; like the training round's q, that count comes from
  public metadata and coins (condition C5 of docs/privacy-accounting.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from personal.model.batching import make_batch
from personal.model.evaluate import evaluate, per_example_loss
from personal.model.tokenizer import encode_interaction
from personal.privacy.noise import GaussianNoise, RandomBytes
from personal.store.log import InteractionLog

import mlx.core as mx
import mlx.nn as nn
import numpy as np

#: Share of a round's candidates held out for the personal-gain metric (at most MAX_HELD_OUT).
HELD_OUT_SHARE = 0.1
MAX_HELD_OUT = 256
#: Rows per forward pass when scoring held-out units.
EVAL_BATCH = 32
MIN_CANDIDATES_FOR_HOLDOUT = 20


@dataclass
class GateResult:
    """Why an adapter was accepted or kept out.

    Attributes:
        passed: both gates passed (a gate that could not be measured passes, with a reason).
        general_loss_before, general_loss_after: public held-out loss of the reference (the
            active adapter, or the bare base with ``gates.general_reference = "base"``) and of
            the new adapter.
        general_regression: relative rise (after / before - 1).
        personal_gain: the noised mean relative loss drop on held-out units (DP), or None.
        held_out_units: how many units were held out and charged for it.
        reasons: one sentence per gate.
    """

    passed: bool
    general_loss_before: float
    general_loss_after: float
    general_regression: float
    personal_gain: float | None
    held_out_units: int
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (every value is public or DP)."""
        return asdict(self)


def split_held_out(
    candidates: Sequence[str], random: RandomBytes | None = None
) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: each candidate is held out by a CSPRNG coin (data-independent)."""
    if len(candidates) < MIN_CANDIDATES_FOR_HOLDOUT:
        return list(candidates), []
    random = random or RandomBytes(None, purpose="holdout")
    threshold = np.uint64(int(HELD_OUT_SHARE * 2**64))
    coins = random.words(len(candidates)) < threshold
    held = [u for u, c in zip(candidates, coins, strict=True) if c][:MAX_HELD_OUT]
    chosen = set(held)
    return [u for u in candidates if u not in chosen], held


def general_loss(model: nn.Module, batches: Iterable[Any]) -> float:
    """Token-weighted loss on the public held-out batches."""
    return evaluate(model, batches).loss


def unit_losses(
    model: nn.Module, tokenizer: Any, log: InteractionLog, units: Sequence[str], keep: int
) -> np.ndarray:
    """Mean loss of each unit's most recent ``keep`` examples (decrypts those units only).

    NaN for a unit with no records left (erased while the round ran): :func:`noised_gain`
    counts it as no gain.
    """
    records: dict[str, list[Any]] = {u: [] for u in units}
    for record in log.iter_records(units=units):
        records[record.unit].append(record)
    owners: list[int] = []  # the unit of each example, in order
    encoded: list[tuple[list[int], int]] = []
    for i, unit in enumerate(units):
        recent = sorted(records[unit], key=lambda r: (r.ts, r.id))[-keep:]
        encoded += [encode_interaction(tokenizer, r.prompt, r.response) for r in recent]
        owners += [i] * len(recent)
    # Every unit's examples in shared batches (one forward pass per batch, not per unit: on a
    # real base a pass over a few rows wastes most of the matmuls' width).
    losses = np.empty(len(encoded))
    for start in range(0, len(encoded), EVAL_BATCH):
        chunk = encoded[start : start + EVAL_BATCH]
        values = per_example_loss(model, make_batch([e for e, _ in chunk], [s for _, s in chunk]))
        mx.eval(values)
        losses[start : start + len(chunk)] = np.array(values)
    out = np.full(len(units), np.nan)
    where = np.array(owners, dtype=np.int64)
    for i in set(owners):
        out[i] = float(np.mean(losses[where == i]))
    return out


def noised_gain(
    before: np.ndarray, after: np.ndarray, sigma: float, noise: GaussianNoise | None = None
) -> float:
    """The DP personal gain: (Σ clip((b - a) / b, -1, 1) + N(0, σ²)) / n.

    A unit whose loss is NaN before or after (erased meanwhile) contributes 0, a value inside
    the clipped range: the sensitivity, and so the charge, is unchanged.
    """
    relative = np.clip((before - after) / np.maximum(before, 1e-9), -1.0, 1.0)
    relative = np.where(np.isfinite(relative), relative, 0.0)
    noised = float(relative.sum()) + float((noise or GaussianNoise()).sample(1, sigma)[0])
    return noised / max(len(before), 1)


def decide(
    *,
    general_before: float,
    general_after: float,
    max_regression: float,
    personal_gain: float | None,
    min_gain: float,
    held_out: int,
    reference: str = "active",
    personal_check: str = "held_out",
) -> GateResult:
    """Apply the policy's thresholds to the measurements.

    ``general_before`` is the reference's loss: the active adapter's (``reference="active"``)
    or the bare base's (``"base"``); ``reference`` only names it in the reasons, as
    ``personal_check`` names why no personal gain was measured.
    """
    regression = general_after / general_before - 1 if general_before > 0 else 0.0
    reasons, passed = [], True
    versus = "the bare base" if reference == "base" else "the active adapter"
    if math.isfinite(regression) and regression <= max_regression:
        reasons.append(f"general loss {regression:+.2%} vs {versus}, within {max_regression:.2%}")
    else:
        passed = False
        reasons.append(
            f"general loss rose {regression:+.2%} vs {versus}, more than {max_regression:.2%}"
        )
    if personal_gain is None and personal_check == "off":
        reasons.append('personal gain not measured: gates.personal_check = "off"')
    elif personal_gain is None:
        reasons.append(
            "personal gain not measured: no held-out unit (fewer than "
            f"{MIN_CANDIDATES_FOR_HOLDOUT} candidates, or their budget is spent)"
        )
    elif min_gain <= -1:
        # Documented meaning of -1: no personal check. A noised relative gain can fall below -1
        # (the released loss more than doubled), so comparing would still refuse adapters.
        reasons.append(f"personal gain {personal_gain:+.3f} (DP); check disabled (min -1)")
    elif personal_gain >= min_gain:
        reasons.append(f"personal gain {personal_gain:+.3f} (DP) meets {min_gain:+.3f}")
    else:
        passed = False
        reasons.append(f"personal gain {personal_gain:+.3f} (DP) below {min_gain:+.3f}")
    return GateResult(
        passed, general_before, general_after, regression, personal_gain, held_out, reasons
    )
