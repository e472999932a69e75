"""What makes a round *continual*: which units it draws from, and what keeps old skills alive.

Per round (:class:`ContinualState`, used by :class:`~personal.personalizer.Personalizer`):

* **Candidates** = the units with records logged since the last round, plus a replay sample
  from the reservoir buffer of past units (``continual.replay_share`` of the candidates). The
  buffer's choice is data-independent (uniform, CSPRNG); replayed units are candidates like new
  ones, so the ledger charges them for the round like any other eligible unit. Units that are
  neither new nor replayed are not candidates and are not charged: their budget is kept for the
  rounds that replay them.
* **Public replay** (free): each step mixes the gradient of a public-corpus batch into the
  released, already-noised private gradient (``continual.public_replay_share`` of it). Public
  data and post-processing of a DP release cost no privacy. The public batches
  (``continual.public_batch_size`` examples each) come from one :class:`PublicStream` that
  resumes, round after round, where the last round stopped, so that every round sees other
  public text (restarting it each round kept pulling on the same few examples).
* **Distillation to the base on public text** (free): each step adds the gradient of
  ``continual.public_distill_weight``·KL(p_base ‖ p_adapted) on a public-corpus batch, a pull
  towards the base model's own predictions on general text. It is zero while the adapter leaves
  general text alone and grows with the drift, so it bounds the general-skill regression that
  DP noise and personal data accumulate over many rounds (LwF, Li & Hoiem 2017, with the frozen
  base as the teacher: the base is the same model with the adapter scaled to 0).
* **Online EWC** (free): the gradient of (λ/2)·Σ F (θ - θ*)² around the previous active adapter
  θ* is added to the released gradient; F comes from public data, or from the round's noised
  gradients with the noise's bias removed (:mod:`personal.training.ewc`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from personal.errors import ConfigError
from personal.model.distill import logit_kd_loss
from personal.model.evaluate import scored_mean_loss
from personal.model.head import scored_logits, split_positions
from personal.model.lora import get_adapter_weights, lora_off
from personal.policy import Policy
from personal.privacy.noise import RandomBytes
from personal.store.log import InteractionLog
from personal.store.settings import StoreSettings
from personal.training.ewc import (
    EWCState,
    FisherFromNoisedGradients,
    ewc_gradient_transform,
    fisher_from_public,
    update_state,
)
from personal.training.replay import ReplayBuffer
from personal.training.round import RoundPlan
from personal.training.step_guard import PublicLossGuard

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

LAST_ID_KEY = "continual_last_record_id"
PUBLIC_CURSOR_KEY = "continual_public_cursor"
Transform = Callable[[dict[str, mx.array], dict[str, mx.array]], dict[str, mx.array]]


class PublicStream:
    """Public-corpus batches in a fixed order, cycling, from batch ``start`` on.

    Each call of :meth:`next` hands out the following batch; :attr:`position` (always below
    the number of batches) is where the next round should start: persist it. Public data only.
    """

    def __init__(self, batches: Sequence[Any], start: int = 0) -> None:
        if not batches:
            raise ConfigError("A public stream needs at least one public batch.")
        self.batches = list(batches)
        self.position = start % len(self.batches)

    def next(self) -> Any:
        batch = self.batches[self.position]
        self.position = (self.position + 1) % len(self.batches)
        return batch


def _as_stream(batches: Sequence[Any] | PublicStream) -> PublicStream:
    return batches if isinstance(batches, PublicStream) else PublicStream(batches)


def _public_gradients(
    model: nn.Module, stream: PublicStream, loss: Callable[[nn.Module, Any], mx.array]
) -> Callable[[], dict[str, mx.array]]:
    """Each call: the flat gradient of ``loss`` on the stream's next public batch."""
    value_and_grad = nn.value_and_grad(model, loss)

    def next_gradient() -> dict[str, mx.array]:
        _, grads = value_and_grad(model, stream.next())
        return dict(tree_flatten(grads))

    return next_gradient


def public_gradient_transform(
    model: nn.Module, batches: Sequence[Any] | PublicStream, share: float
) -> Transform:
    """``g ↦ (1 - share)·g + share·∇L_public`` with a new public batch each step (free)."""
    next_gradient = _public_gradients(model, _as_stream(batches), scored_mean_loss)

    def transform(grads: dict[str, mx.array], params: dict[str, mx.array]) -> dict[str, mx.array]:
        public = next_gradient()
        return {k: (1 - share) * g + share * public[k] for k, g in grads.items()}

    return transform


def distill_to_base_loss(model: nn.Module, batch: Any) -> mx.array:
    """KL(p_base ‖ p_model) per response token: how far the adapter moved the model's
    predictions on ``batch`` from the bare base's (the base = ``model`` with LoRA off)."""
    scored = split_positions(model, batch.mask)
    if scored is None:
        with lora_off(model):
            base_logits = mx.stop_gradient(model(batch.inputs))
        return logit_kd_loss(model(batch.inputs), base_logits, batch.mask)
    # Logits at the response tokens only: the KL is averaged over those, and projecting the
    # prompt's positions to the vocabulary twice (base and adapted) is most of the pull's cost.
    positions, valid = scored
    with lora_off(model):
        base_logits = mx.stop_gradient(scored_logits(model, batch.inputs, positions))
    return logit_kd_loss(scored_logits(model, batch.inputs, positions), base_logits, valid)


def distill_to_base_transform(
    model: nn.Module, batches: Sequence[Any] | PublicStream, weight: float
) -> Transform:
    """``g ↦ g + weight·∇KL(p_base ‖ p_θ)`` with a new public batch each step (free).

    The pull's gradient is estimated on one batch, so its error grows with the drift and
    shrinks with the batch (``continual.public_batch_size``; ``docs/continual.md``).

    The penalty's curvature at the base is the Fisher of the model's predictions on public
    text, so with plain SGD at learning rate ``lr`` it is stable while
    ``lr·weight·F_max < 2`` (``F_max`` that Fisher's largest eigenvalue); past that the adapter
    oscillates away from the base (the gate then refuses it). ``docs/continual.md`` gives the
    values measured on the bundled bases.
    """
    next_gradient = _public_gradients(model, _as_stream(batches), distill_to_base_loss)

    def transform(grads: dict[str, mx.array], params: dict[str, mx.array]) -> dict[str, mx.array]:
        pull = next_gradient()
        return {k: g + weight * pull[k] for k, g in grads.items()}

    return transform


def compose(transforms: Sequence[Transform]) -> Transform | None:
    """Apply ``transforms`` in order (``None`` when there are none)."""
    if not transforms:
        return None

    def composed(grads: dict[str, mx.array], params: dict[str, mx.array]) -> dict[str, mx.array]:
        for transform in transforms:
            grads = transform(grads, params)
        return grads

    return composed


class ContinualState:
    """The replay buffer, EWC state and round bookkeeping of one store under one policy."""

    def __init__(
        self, log: InteractionLog, settings: StoreSettings, policy: Policy, *, seed: int | None
    ) -> None:
        self.log, self.settings, self.policy = log, settings, policy
        random = RandomBytes(seed, purpose="replay") if seed is not None else None
        self.buffer = ReplayBuffer.open(log.store, policy.continual.buffer_capacity, random=random)
        self.ewc = EWCState.load(log.store)
        self._fisher: FisherFromNoisedGradients | None = None
        self._stream: PublicStream | None = None
        self._high_water = log.last_id()

    def candidates(self) -> tuple[list[str], list[str]]:
        """``(new, replayed)`` units for the next round."""
        new = self.log.units_after(int(self.settings.get(LAST_ID_KEY, 0)))
        share = self.policy.continual.replay_share
        if share <= 0 or not new:
            return new, []
        wanted = round(share / (1 - share) * len(new))
        present, fresh = set(self.log.units()), set(new)
        replay = [u for u in self.buffer.sample(wanted) if u in present and u not in fresh]
        return new, replay

    def hooks(
        self, model: nn.Module, plan: RoundPlan, eligible: int, public: Sequence[Any]
    ) -> dict[str, Any]:
        """``on_release`` / ``transform`` / ``guard`` for the round's DP step (all
        post-processing; the guard checks updates on the first public batch,
        :mod:`personal.training.step_guard`)."""
        continual = self.policy.continual
        transforms: list[Transform] = []
        if self.ewc is not None and continual.ewc_lambda > 0:
            transforms.append(ewc_gradient_transform(self.ewc, continual.ewc_lambda))
        self._stream = None
        if public and (continual.public_replay_share > 0 or continual.public_distill_weight > 0):
            start = int(self.settings.get(PUBLIC_CURSOR_KEY, 0))
            self._stream = stream = PublicStream(public, start)
            if continual.public_replay_share > 0:
                share = continual.public_replay_share
                transforms.append(public_gradient_transform(model, stream, share))
            if continual.public_distill_weight > 0:
                weight = continual.public_distill_weight
                transforms.append(distill_to_base_transform(model, stream, weight))
        self._fisher = None
        if continual.fisher_source == "dp_gradients" and continual.ewc_lambda > 0:
            self._fisher = FisherFromNoisedGradients(
                noise_std=plan.noise_multiplier * plan.clip_norm,
                expected_size=plan.sample_rate(eligible) * eligible,
            )
        hooks: dict[str, Any] = {"transform": compose(transforms), "on_release": self._fisher}
        if public and self.policy.training.step_guard == "public":
            hooks["guard"] = PublicLossGuard.for_round(
                model, public[0], max_rise=self.policy.gates.max_general_regression,
                reference=self.policy.gates.general_reference,
            )  # fmt: skip
        return hooks

    def after_round(
        self, model: nn.Module, new_units: Sequence[str], accepted: bool, public: Sequence[Any]
    ) -> None:
        """Remember the round: offer its new units to the buffer; re-anchor EWC if accepted."""
        self.buffer.offer(new_units)
        self.buffer.save()
        if accepted and self.policy.continual.ewc_lambda > 0:
            if self._fisher is not None and self._fisher.steps:
                fisher = self._fisher.estimate()
            else:
                fisher = fisher_from_public(model, public)
            anchor = {k: mx.array(v) for k, v in get_adapter_weights(model).items()}
            self.ewc = update_state(self.ewc, anchor, fisher)
            self.ewc.save(self.log.store)
        self.settings.set(LAST_ID_KEY, self._high_water)
        if self._stream is not None:  # the next round goes on with other public text
            self.settings.set(PUBLIC_CURSOR_KEY, self._stream.position)

    def refresh(self) -> None:
        """Note the log's current last record id (call right before choosing candidates)."""
        self._high_water = self.log.last_id()

    def reset_ewc(self) -> None:
        """Forget the EWC anchor (e.g. after a base-model change)."""
        EWCState.delete(self.log.store)
        self.ewc = None
