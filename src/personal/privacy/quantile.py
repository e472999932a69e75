"""Adaptive clipping: the clip norm follows a quantile of the unit gradient norms, privately.

Andrew, Thakkar, McMahan and Ramaswamy (2021, "Differentially Private Learning with Adaptive
Clipping", NeurIPS; arXiv:1905.03871). With the clip norm ``C`` of step ``t``, every DP-SGD step
also releases the noisy count of units whose gradient was *not* clipped,

    b̃ = Σ_i (1[‖g_i‖ ≤ C] − ½) + N(0, σ_b²)        (sensitivity ½ per unit, add/remove),

and the next step clips at ``C · exp(−η (b̃/B + ½ − γ))``: geometric steps towards the γ-quantile
of the unit norms (B is the *public* expected batch size the gradient sum is divided by too).
The gradient sum then takes the noise multiplier σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½) > σ, so that the
joint release (sum, count) is exactly the Gaussian mechanism with noise multiplier σ: the
ledger charges σ as for a fixed clip norm (docs/privacy-accounting.md, "Adaptive clipping").

Everything here is arithmetic on public values and DP releases: the noise itself is drawn by
:mod:`personal.privacy.noise`, the per-unit indicator is computed in :mod:`personal.privacy.dpsgd`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from personal.errors import ConfigError

#: The clip norm is kept in this range whatever the releases say (post-processing): C > 0 keeps
#: the noise std σ_Δ·C > 0, and the top is the policy's own limit on ``clip_norm``.
MIN_CLIP = 1e-6
MAX_CLIP = 1000.0


def gradient_noise_multiplier(sigma: float, count_std: float) -> float:
    """σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½): the gradient sum's noise multiplier when a count with noise
    std ``count_std`` (σ_b, sensitivity ½) is released beside it at total noise multiplier σ.

    Raises:
        ConfigError: ``count_std <= sigma / 2`` (the count alone would spend the whole σ).
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"noise_multiplier must be a finite number > 0, got {sigma!r}.")
    if not (math.isfinite(count_std) and count_std > sigma / 2):
        raise ConfigError(
            f"quantile clipping needs a count noise std σ_b = {count_std:.4g} above "
            f"noise_multiplier / 2 = {sigma / 2:.4g} (σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½) is undefined "
            "otherwise): raise privacy.clip_count_noise (σ_b = clip_count_noise × expected "
            'units per step), lower privacy.noise_multiplier, or use privacy.clip = "fixed".'
        )
    return 1.0 / math.sqrt(sigma**-2 - (2.0 * count_std) ** -2)


@dataclass(frozen=True)
class QuantileClipping:
    """The parameters of quantile clipping (``[privacy] clip = "quantile"``).

    Attributes:
        target_quantile: γ in (0, 1): the share of units left unclipped that C is steered to.
        learning_rate: η in (0, 1]: the geometric step ``C ← C·exp(−η(b̃/B + ½ − γ))``.
        count_noise: σ_b as a fraction of the expected units per step B, in (0, 1]
            (the paper's B/20 is 0.05).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float = 0.05

    def __post_init__(self) -> None:
        checks = {
            "target_quantile": 0 < self.target_quantile < 1,
            "learning_rate": 0 < self.learning_rate <= 1,
            "count_noise": 0 < self.count_noise <= 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok:
                raise ConfigError(f"QuantileClipping.{name} is out of range: {value!r}.")

    def count_std(self, expected_size: float) -> float:
        """σ_b = ``count_noise`` · B for a step of expected size B (public)."""
        return self.count_noise * expected_size

    def gradient_noise_multiplier(self, sigma: float, expected_size: float) -> float:
        """σ_Δ for total noise multiplier σ at expected size B (see the module function)."""
        return gradient_noise_multiplier(sigma, self.count_std(expected_size))

    def next_clip(self, clip: float, noisy_count: float, expected_size: float) -> float:
        """``C·exp(−η(b̃/B + ½ − γ))`` within [:data:`MIN_CLIP`, :data:`MAX_CLIP`].

        ``noisy_count`` is the released b̃ (centred: ½ subtracted per unit), ``expected_size``
        the public B; b̃/B + ½ estimates the unclipped share, unbiased in expectation over the
        Poisson sample (docs/privacy-accounting.md).
        """
        unclipped = noisy_count / expected_size + 0.5
        step = -self.learning_rate * (unclipped - self.target_quantile)
        if math.log(clip) + step >= math.log(MAX_CLIP):  # an absurd release cannot overflow
            return MAX_CLIP
        return max(MIN_CLIP, clip * math.exp(step))  # nor reach C = 0 (exp underflows to 0)
