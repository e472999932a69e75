"""The one-run empirical lower bound on ε (Steinke, Nasr & Jagielski 2023), as pure maths.

The audit inserts ``m`` canaries, each included in training independently with probability 1/2,
trains once, scores every canary (lower loss after training = more likely a member), and
*guesses*: the ``k+`` best-scored canaries "in", the ``k-`` worst "out", abstaining on the rest.
If training is (ε, δ)-DP, the number ``v`` of correct guesses out of ``r = k+ + k-`` is
stochastically dominated by Binomial(r, e^ε / (1 + e^ε)) up to a δ term (their Theorem 3.1 and
Proposition 5.7; :func:`p_value`). The lower bound is the largest ε whose p-value stays below
``1 - confidence``: with that confidence the mechanism is *not* (ε', δ)-DP for any smaller ε'.

Choosing ``k±`` after looking at the outcome would break the test, so the guess counts come from
a small fixed menu (:data:`GUESS_FRACTIONS`) and the confidence is split across the menu
(Bonferroni): the bound reported is valid for the menu as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from personal.errors import PrivacyParameterError

import numpy as np
from scipy import stats

#: Guess counts tried, as fractions of the canaries guessed "in" and "out" each.
GUESS_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses correct] under an (ε, δ)-DP null hypothesis.

    Steinke, Nasr & Jagielski 2023, Proposition 5.7: β = P[Binomial(r, e^ε/(1+e^ε)) >= v] plus
    the δ term ``2·m·δ·α`` with α = max_i P[v > Binomial(r, p) >= v - i] / i.
    """
    if not 0 <= v <= r <= m:
        raise PrivacyParameterError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise PrivacyParameterError(
            f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}"
        )
    p = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, p))
    alpha, mass = 0.0, 0.0
    if delta > 0:
        for i in range(1, v + 1):
            mass += float(stats.binom.pmf(v - i, r, p))
            alpha = max(alpha, mass / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, alpha: float) -> float:
    """The largest ε (to 1e-4) with ``p_value(m, r, v, ε, δ) <= alpha``; 0 if none."""
    if p_value(m, r, v, 0.0, delta) > alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) <= alpha:
        low, high = high, high * 2
        if high > 1e3:
            return math.inf
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) <= alpha else (low, mid)
    return low


@dataclass(frozen=True)
class AuditBound:
    """The outcome of a one-run audit.

    Attributes:
        epsilon: the empirical lower bound (0 when the guesses are no better than chance).
        canaries: m.
        guesses: r of the best menu entry.
        correct: v of the best menu entry.
        confidence: the confidence level of the bound, for the menu as a whole.
        delta: the δ of the null hypothesis.
    """

    epsilon: float
    canaries: int
    guesses: int
    correct: int
    confidence: float
    delta: float


def audit_bound(
    scores: Sequence[float],
    included: Sequence[bool],
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] = GUESS_FRACTIONS,
) -> AuditBound:
    """The lower bound on ε from canary ``scores`` (higher = guessed member) and the truth.

    Raises:
        PrivacyParameterError: lengths differ, fewer than 4 canaries, or a bad confidence.
    """
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    m = len(s)
    if m != len(truth) or m < 4:
        raise PrivacyParameterError("need at least 4 canaries, each with a score and a truth")
    if not 0 < confidence < 1:
        raise PrivacyParameterError(f"confidence must be in (0, 1), got {confidence}")
    # Ties are broken by a fixed permutation so a constant score guesses at chance.
    order = np.lexsort((np.random.default_rng(0).permutation(m), -s))  # best score first
    alpha = (1 - confidence) / len(fractions)
    best = AuditBound(0.0, m, 0, 0, confidence, delta)
    for fraction in fractions:
        k = max(1, int(fraction * m))
        if 2 * k > m:
            continue
        v = int(truth[order[:k]].sum() + (~truth[order[m - k :]]).sum())
        eps = epsilon_lower_bound(m, 2 * k, v, delta=delta, alpha=alpha)
        if eps > best.epsilon:
            best = AuditBound(eps, m, 2 * k, v, confidence, delta)
    return best
