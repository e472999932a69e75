"""Knowledge distillation: a big teacher teaches a small student, or an old base a new one.

Two uses in the product: building the small base models from a larger teacher on public text,
and migrating a personal adapter to a new base (old base + adapter teach a fresh LoRA on the
new base; only the student's trainable parameters move, so LoRA-only students work as is).

Token-level distillation (teacher and student share a tokenizer) combines, in
:func:`distill`:

- logit distillation, ``T² · KL(teacher_T ‖ student_T)`` (Hinton et al. 2015);
- intermediate feature matching, MSE between hidden states through a learned projection when
  the widths differ (FitNets, Romero et al. 2015; TinyBERT, Jiao et al. 2020);
- attention-map transfer, KL between attention distributions (TinyBERT; MiniLM, Wang et al.
  2020);
- optionally the ordinary cross-entropy on the data.

Sequence-level distillation (Kim & Rush 2016) trains the student on text the teacher generated;
it only exchanges text, so it works when the tokenizers differ: see
:func:`personal.model.seqkd.sequence_level_distill`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from personal.errors import ConfigError, TokenizerMismatch
from personal.model.batching import Batch
from personal.model.capture import capture, hidden_size, num_layers

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

LayerMap = tuple[tuple[int, int], ...]
StepCallback = Callable[[int, dict[str, float]], None]
COMPONENTS = ("kd", "ce", "feature", "attention")


# --- losses ----------------------------------------------------------------------------------


def _masked_mean(values: mx.array, mask: mx.array) -> mx.array:
    """Mean of ``values`` ``(B, T)`` over the positions where ``mask`` ``(B, T)`` is 1."""
    return (values * mask).sum() / mx.maximum(mask.sum(), 1.0)


def logit_kd_loss(
    student_logits: mx.array,
    teacher_logits: mx.array,
    mask: mx.array,
    temperature: float = 1.0,
) -> mx.array:
    """Temperature-scaled KL divergence from the teacher's to the student's distribution.

    ``T² · KL(softmax(t / T) ‖ softmax(s / T))`` per token, averaged over masked tokens. The
    ``T²`` keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).

    Args:
        student_logits: ``(B, T, V)``.
        teacher_logits: ``(B, T, V)``; treat as a constant (``mx.stop_gradient``).
        mask: ``(B, T)``, 1 where the token counts.
        temperature: ``T > 0``; above 1 it exposes the teacher's ranking of unlikely tokens.

    Raises:
        TokenizerMismatch: the vocabularies differ (use sequence-level distillation).
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise TokenizerMismatch(
            f"Student vocabulary ({student_logits.shape[-1]}) differs from the teacher's "
            f"({teacher_logits.shape[-1]}): token-level distillation needs one tokenizer; use "
            "personal.model.seqkd.sequence_level_distill across tokenizers."
        )
    t_logp = nn.log_softmax(teacher_logits.astype(mx.float32) / temperature, axis=-1)
    s_logp = nn.log_softmax(student_logits.astype(mx.float32) / temperature, axis=-1)
    kl = (mx.exp(t_logp) * (t_logp - s_logp)).sum(axis=-1)  # (B, T)
    return temperature**2 * _masked_mean(kl, mask)


def _rms_normalise(x: mx.array, eps: float = 1e-6) -> mx.array:
    # Parameter-free: makes the loss blind to each layer's residual-stream scale.
    return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + eps)


def feature_matching_loss(
    student_hidden: mx.array,
    teacher_hidden: mx.array,
    mask: mx.array,
    projection: nn.Module | None = None,
    *,
    normalize: bool = False,
) -> mx.array:
    """Mean squared error between (projected) student and teacher hidden states.

    Args:
        student_hidden: ``(B, T, Ds)``.
        teacher_hidden: ``(B, T, Dt)``; treat as a constant.
        mask: ``(B, T)``, 1 where the position counts.
        projection: maps ``Ds -> Dt`` (e.g. a trained ``nn.Linear``); required when widths
            differ.
        normalize: RMS-normalise both sides first, so deep layers with large activations do
            not dominate and only the direction of the features is matched.

    Returns:
        The MSE per feature, averaged over masked positions.
    """
    student = projection(student_hidden) if projection is not None else student_hidden
    if student.shape[-1] != teacher_hidden.shape[-1]:
        raise ConfigError(
            f"Student features have width {student.shape[-1]}, the teacher's "
            f"{teacher_hidden.shape[-1]}: pass a projection between them."
        )
    student, teacher = student.astype(mx.float32), teacher_hidden.astype(mx.float32)
    if normalize:
        student, teacher = _rms_normalise(student), _rms_normalise(teacher)
    return _masked_mean(mx.mean(mx.square(student - teacher), axis=-1), mask)


def _log(p: mx.array) -> mx.array:
    # Causal maps hold exact zeros; clamping keeps 0 · log 0 at 0 and its gradient finite.
    return mx.log(mx.maximum(p, 1e-12))


def attention_transfer_loss(
    student_attn: mx.array, teacher_attn: mx.array, mask: mx.array
) -> mx.array:
    """KL divergence between teacher and student attention distributions, per query.

    With equal head counts each student head matches its teacher head; otherwise both are
    averaged over heads first (a head-count-free map, still a distribution per query).

    Args:
        student_attn: ``(B, Hs, T, T)`` attention probabilities.
        teacher_attn: ``(B, Ht, T, T)``; treat as a constant.
        mask: ``(B, T)``, 1 where the query position counts.
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        student_attn = student_attn.mean(axis=1, keepdims=True)  # (B, 1, T, T)
        teacher_attn = teacher_attn.mean(axis=1, keepdims=True)
    kl = (teacher_attn * (_log(teacher_attn) - _log(student_attn))).sum(axis=-1)  # (B, H, T)
    return _masked_mean(kl.mean(axis=1), mask)


# --- configuration ---------------------------------------------------------------------------


def even_layer_map(student_layers: int, teacher_layers: int) -> LayerMap:
    """Pair every student block with an evenly spaced teacher block, last with last.

    Student block ``i`` (0-based) learns from teacher block ``round((i + 1) · Lt / Ls) - 1``.
    """
    ratio = teacher_layers / student_layers
    return tuple(
        (i, max(0, min(teacher_layers, round((i + 1) * ratio)) - 1)) for i in range(student_layers)
    )


@dataclass(frozen=True)
class DistillConfig:
    """What the student learns from, and how much of each.

    Attributes:
        temperature: softening temperature of logit distillation.
        kd_weight: weight of the logit-distillation loss.
        ce_weight: weight of the ordinary cross-entropy on the batch targets.
        feature_weight: weight of hidden-state matching (0 skips it).
        feature_layers: ``(student_block, teacher_block)`` pairs; ``None`` = even spacing.
        normalize_features: RMS-normalise hidden states before the MSE.
        projection: ``"auto"`` learns a ``Ds -> Dt`` projection only when widths differ;
            ``"always"`` learns one for every pair (identity-initialised when square), for
            students whose feature space is unrelated to the teacher's (a new base model).
        attention_weight: weight of attention-map transfer (0 skips it).
        attention_layers: ``(student_block, teacher_block)`` pairs; ``None`` = even spacing.
        max_grad_norm: clip the global gradient norm (``None``: no clipping).
    """

    temperature: float = 2.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    feature_weight: float = 0.0
    feature_layers: LayerMap | None = None
    normalize_features: bool = True
    projection: str = "auto"
    attention_weight: float = 0.0
    attention_layers: LayerMap | None = None
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature}.")
        weights = [getattr(self, f"{name}_weight") for name in COMPONENTS]
        if any(not (math.isfinite(w) and w >= 0) for w in weights) or not any(weights):
            raise ConfigError(
                f"Loss weights (kd, ce, feature, attention) must be finite and >= 0 with at "
                f"least one > 0, got {weights}."
            )
        if self.projection not in ("auto", "always"):
            raise ConfigError(f"projection must be 'auto' or 'always', got {self.projection!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}.")
        for name in ("feature_layers", "attention_layers"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _check_pairs(name, value))

    def layer_maps(self, student: nn.Module, teacher: nn.Module) -> tuple[LayerMap, LayerMap]:
        """The (feature, attention) block pairs in effect, validated; ``()`` for a term off."""
        if self.feature_weight == 0 and self.attention_weight == 0:
            return (), ()  # logits only: needs no capture, so works for any model
        ls, lt = num_layers(student), num_layers(teacher)
        maps: list[LayerMap] = []
        for name in ("feature", "attention"):
            pairs = getattr(self, f"{name}_layers") or even_layer_map(ls, lt)
            bad = [p for p in pairs if p[0] >= ls or p[1] >= lt]
            if bad:
                raise ConfigError(
                    f"{name}_layers pairs {bad} are out of range: the student has {ls} blocks, "
                    f"the teacher {lt}."
                )
            maps.append(pairs if getattr(self, f"{name}_weight") > 0 else ())
        return maps[0], maps[1]


def _check_pairs(name: str, pairs: Iterable[Sequence[int]]) -> LayerMap:
    try:
        result = tuple((int(s), int(t)) for s, t in pairs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be (student_block, teacher_block) pairs.") from exc
    if not result or any(s < 0 or t < 0 for s, t in result):
        raise ConfigError(f"{name} needs at least one pair of block indices >= 0, got {pairs}.")
    return result


# --- the trainable part: student + projections ------------------------------------------------


class Projections(nn.Module):
    """One student-to-teacher feature projection per feature pair (``nn.Identity`` if none)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = layers


def make_projections(
    student: nn.Module, teacher: nn.Module, config: DistillConfig, *, seed: int = 0
) -> Projections:
    """Projections for ``config``'s feature pairs (empty when feature matching is off).

    Square projections start at the identity, so "always" begins as plain feature matching.
    """
    pairs, _ = config.layer_maps(student, teacher)
    if not pairs:
        return Projections([])
    ds, dt = hidden_size(student), hidden_size(teacher)
    key = mx.random.key(seed)
    layers: list[nn.Module] = []
    for _ in pairs:
        if ds == dt and config.projection == "auto":
            layers.append(nn.Identity())
            continue
        key, sub = mx.random.split(key)
        linear = nn.Linear(ds, dt, bias=False)
        bound = 1.0 / math.sqrt(ds)
        linear.weight = (
            mx.eye(dt) if ds == dt else mx.random.uniform(-bound, bound, (dt, ds), key=sub)
        )
        layers.append(linear)
    return Projections(layers)


class _Trainee(nn.Module):
    # One module so nn.value_and_grad and the optimiser see the student and projections.
    def __init__(self, student: nn.Module, projections: Projections) -> None:
        super().__init__()
        self.student = student
        self.projections = projections


# --- one step --------------------------------------------------------------------------------


def _forward(model: nn.Module, inputs: mx.array, features: list, attention: list) -> dict:
    """Logits, plus the hidden states / attention maps of the listed blocks."""
    if not (features or attention):
        return {"logits": model(inputs), "hidden": [], "attn": []}
    out = capture(model, inputs, attention_layers=attention)
    hidden = [out.hidden_states[i] for i in features]
    return {"logits": out.logits, "hidden": hidden, "attn": [out.attentions[i] for i in attention]}


def _loss(
    trainee: _Trainee, batch: Batch, teacher: dict, config: DistillConfig, maps: tuple
) -> tuple[mx.array, mx.array]:
    features, attention = maps
    student = _forward(
        trainee.student, batch.inputs, [p[0] for p in features], [p[0] for p in attention]
    )
    mask = batch.mask
    kd = ce = feature = attn = mx.array(0.0)
    if config.kd_weight > 0:
        kd = logit_kd_loss(student["logits"], teacher["logits"], mask, config.temperature)
    if config.ce_weight > 0:
        logits = student["logits"].astype(mx.float32)  # (B, T, V)
        ce = _masked_mean(nn.losses.cross_entropy(logits, batch.targets), mask)
    pairs = zip(trainee.projections.layers, student["hidden"], teacher["hidden"], strict=True)
    for proj, s, t in pairs:
        loss = feature_matching_loss(s, t, mask, proj, normalize=config.normalize_features)
        feature = feature + loss / len(features)
    for s, t in zip(student["attn"], teacher["attn"], strict=True):
        attn = attn + attention_transfer_loss(s, t, mask) / len(attention)
    parts = [kd, ce, feature, attn]
    weights = [getattr(config, f"{name}_weight") for name in COMPONENTS]
    return sum(w * v for w, v in zip(weights, parts, strict=True)), mx.stack(parts)


def _make_step(
    trainee: _Trainee, optimizer: optim.Optimizer, config: DistillConfig, maps: tuple, compile: bool
) -> Callable:
    loss_and_grad = nn.value_and_grad(trainee, partial(_loss, config=config, maps=maps))

    def step(
        inputs: mx.array, targets: mx.array, mask: mx.array, teacher: dict
    ) -> tuple[mx.array, mx.array]:
        (total, parts), grads = loss_and_grad(trainee, Batch(inputs, targets, mask), teacher)
        if config.max_grad_norm is not None:
            grads, _ = optim.clip_grad_norm(grads, config.max_grad_norm)
        optimizer.update(trainee, grads)
        return total, parts

    if compile:
        state = [trainee.state, optimizer.state, mx.random.state]
        step = partial(mx.compile, inputs=state, outputs=state)(step)
    return step


def distill(
    teacher: nn.Module,
    student: nn.Module,
    batches: Iterable[Batch],
    optimizer: optim.Optimizer,
    config: DistillConfig | None = None,
    *,
    projections: Projections | None = None,
    callback: StepCallback | None = None,
    compile: bool = False,
) -> list[dict[str, float]]:
    """Train the student to imitate the teacher on every batch once.

    The teacher runs in eval mode outside the gradient (its outputs are constants); the student
    trains its *trainable* parameters only (freeze it or inject LoRA first to restrict them),
    together with the feature projections.

    Args:
        teacher: an mlx-lm model (any, for logit distillation alone; a supported family for
            features/attention, see :mod:`personal.model.capture`); put in eval mode, its
            weights are never touched.
        student: an mlx-lm model sharing the teacher's tokenizer.
        batches: :class:`~personal.model.batching.Batch` es; ``mask`` selects the positions
            distilled (``targets`` are used only by the cross-entropy term).
        optimizer: an ``mlx.optimizers`` optimiser; it also updates the projections.
        config: the recipe; defaults to logit distillation at ``T = 2``.
        projections: reuse projections across calls (from :func:`make_projections`); new
            ones are made otherwise.
        callback: ``callback(step, record)`` after each step.
        compile: compile the student step (traced once per batch shape).

    Returns:
        One record per step: ``loss`` (the weighted total) and the unweighted ``kd``, ``ce``,
        ``feature``, ``attention`` components (0 for those switched off), and ``tokens``.
    """
    config = config or DistillConfig()
    maps = config.layer_maps(student, teacher)
    if projections is None:
        projections = make_projections(student, teacher, config)
    if len(projections.layers) != len(maps[0]):
        raise ConfigError("The projections were made for another config or pair of models.")
    trainee = _Trainee(student, projections)
    step = _make_step(trainee, optimizer, config, maps, compile)
    teacher_layers = [p[1] for p in maps[0]], [p[1] for p in maps[1]]
    teacher.eval()
    trainee.train()
    records = []
    for index, batch in enumerate(batches):
        targets = tree_map(mx.stop_gradient, _forward(teacher, batch.inputs, *teacher_layers))
        mx.eval(targets)  # the teacher pass is finished before the student step starts
        total, parts = step(batch.inputs, batch.targets, batch.mask, targets)
        mx.eval(total, parts, trainee.parameters(), optimizer.state)
        record = {"loss": total.item(), **dict(zip(COMPONENTS, parts.tolist(), strict=True))}
        record["tokens"] = batch.num_tokens
        records.append(record)
        if callback is not None:
            callback(index, record)
    trainee.eval()
    return records
