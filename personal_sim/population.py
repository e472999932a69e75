"""A synthetic user population: personas, heavy-tailed usage and interests that drift.

Every user is drawn from the public corpus's world (:mod:`personal_sim.world`), so what they
say is what the base models were distilled on, re-weighted by a persona: favourite contacts,
places, artists, routines (tasks, times, events), who "mom" is, where "home" is, and wording
and typing quirks (:meth:`SlotSkew.random <personal_sim.world.SlotSkew.random>`). On top of it:

* **Usage** is heavy-tailed: a user's mean interactions per day is ``MIN_RATE`` times a
  Pareto(``PARETO_SHAPE``) draw, capped at ``MAX_RATE``, so most users are light and a few are
  heavy. Each day's count is Poisson around it (weekends a little quieter).
* **Drift**: over the timeline a user's intent mix moves (geometrically) from their starting
  mix to another one, and their music taste (favourite artists and genres) fades from the old
  favourites to new ones. Day ``d`` of ``D`` uses the persona at ``t = d / (D - 1)``.
* **Held-out examples** for evaluation are drawn from the same day's persona on a stream of
  their own and are never logged: they stand for the user's next requests. Like real requests,
  some repeat something the user said before ("call my mom"); pass ``exclude`` to leave such
  repeats out (:meth:`User.logged_pairs`).

Everything is a pure function of ``(seed, user index)``: user ``i`` is the same whatever the
population size, and the same seed gives the same users on every machine::

    population = Population.draw(8, seed=0)
    user = population.users[3]
    user.day(0, days=7)        # [(timestamp, Interaction), ...] the user logs on day 0
    user.held_out(0, days=7, n=48)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from personal_sim.public_corpus import Interaction, sample_interaction, stream_seed
from personal_sim.world import SlotSkew, World

#: Pareto usage: mean interactions/day = MIN_RATE * Pareto(PARETO_SHAPE), capped at MAX_RATE.
MIN_RATE, PARETO_SHAPE, MAX_RATE = 4.0, 1.3, 80.0
#: Users at or above this mean rate are called "heavy" in reports.
HEAVY_RATE = 16.0
#: Day 0 of every simulated timeline (a Monday); timestamps are UTC.
START = date(2026, 3, 2)
#: The waking hours interactions are spread over.
FIRST_HOUR, LAST_HOUR = 7, 23
WEEKEND_FACTOR = 0.75
#: Slots whose favourites drift to new ones over the timeline (music taste).
DRIFTING_SLOTS = ("artist", "genre")
#: The public population: its users train the bundled bases' population adapters
#: (:mod:`personal_sim.build_population_adapter`), so no simulation evaluates this seed.
PUBLIC_SEED = 17_000_017


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's product of uniforms; fine for means up to a few hundred)."""
    if mean <= 0:
        return 0
    if mean > 300:  # normal approximation, never hit with MAX_RATE
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _fade(boost: dict[str, float], weight: float) -> dict[str, float]:
    """Favourite multipliers scaled towards 1 (``weight`` 1 keeps them, 0 makes them neutral)."""
    return {v: 1.0 + (m - 1.0) * weight for v, m in boost.items()}


def _combine(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {v: a.get(v, 1.0) * b.get(v, 1.0) for v in sorted({*a, *b})}


@dataclass(frozen=True)
class User:
    """One synthetic user.

    Attributes:
        index: position in the population (also names the user's seed stream).
        seed: the user's own seed (derived from the population seed and the index).
        rate: mean interactions logged per day.
        strength: how strongly the persona departs from the population (``SlotSkew`` strength).
        persona: the persona on day 0.
        later: the persona the user's intent mix and music taste drift to by the last day.
    """

    index: int
    seed: int
    rate: float
    strength: float
    persona: SlotSkew = field(repr=False)
    later: SlotSkew = field(repr=False)

    @classmethod
    def draw(cls, population_seed: int, index: int, world: World | None = None) -> User:
        """User ``index`` of the population with seed ``population_seed`` (a pure function)."""
        world = world or World.default()
        seed = stream_seed(population_seed, f"user/{index}")
        rng = random.Random(seed)
        rate = min(MAX_RATE, MIN_RATE * rng.paretovariate(PARETO_SHAPE))
        strength = rng.uniform(2.0, 3.5)
        persona = SlotSkew.random(rng, world, strength=strength)
        later = SlotSkew.random(random.Random(stream_seed(seed, "drift")), world, strength)
        return cls(index, seed, round(rate, 3), round(strength, 3), persona, later)

    @property
    def kind(self) -> str:
        """``"heavy"`` or ``"light"`` (by :data:`HEAVY_RATE`)."""
        return "heavy" if self.rate >= HEAVY_RATE else "light"

    def persona_at(self, t: float) -> SlotSkew:
        """The persona at timeline position ``t`` in [0, 1] (0: day 0, 1: the last day)."""
        t = min(1.0, max(0.0, t))
        intents = sorted({*self.persona.intent_boost, *self.later.intent_boost})
        mix = {
            i: math.exp(
                (1 - t) * math.log(self.persona.intent_boost.get(i, 1.0))
                + t * math.log(self.later.intent_boost.get(i, 1.0))
            )
            for i in intents
        }
        boost = dict(self.persona.boost)
        for slot in DRIFTING_SLOTS:
            old = _fade(self.persona.boost.get(slot, {}), 1 - t)
            new = _fade(self.later.boost.get(slot, {}), t)
            boost[slot] = _combine(old, new)
        return replace(self.persona, intent_boost=mix, boost=boost)

    @staticmethod
    def position(day: int, days: int) -> float:
        """Timeline position of ``day`` among ``days`` (0 on the first, 1 on the last)."""
        return day / (days - 1) if days > 1 else 0.0

    def day(
        self, day: int, days: int, world: World | None = None
    ) -> list[tuple[datetime, Interaction]]:
        """What the user logs on ``day`` of ``days``: ``(UTC timestamp, interaction)``, in order."""
        world = world or World.default()
        rng = random.Random(stream_seed(self.seed, f"day/{day}"))
        when = START + timedelta(days=day)
        mean = self.rate * (WEEKEND_FACTOR if when.weekday() >= 5 else 1.0)
        count = _poisson(rng, mean)
        skew = self.persona_at(self.position(day, days))
        midnight = datetime.combine(when, time(0), tzinfo=UTC)
        span = (LAST_HOUR - FIRST_HOUR) * 3600
        seconds = sorted(FIRST_HOUR * 3600 + rng.randrange(span) for _ in range(count))
        return [
            (midnight + timedelta(seconds=s), sample_interaction(rng, world, skew=skew))
            for s in seconds
        ]

    def logged_pairs(self, days: int, world: World | None = None) -> frozenset[tuple[str, str]]:
        """Every ``(prompt, response)`` the user logs over a timeline of ``days``."""
        return frozenset(
            (it.prompt, it.response) for d in range(days) for _, it in self.day(d, days, world)
        )

    def held_out(
        self,
        day: int,
        days: int,
        n: int,
        world: World | None = None,
        *,
        exclude: frozenset[tuple[str, str]] | None = None,
    ) -> list[Interaction]:
        """``n`` evaluation examples from the persona of ``day`` (never logged by the user).

        ``exclude``: ``(prompt, response)`` pairs to leave out, e.g. :meth:`logged_pairs` to
        measure generalisation only (default: none; fresh draws may repeat logged requests).
        """
        world = world or World.default()
        exclude = exclude or frozenset()
        rng = random.Random(stream_seed(self.seed, f"held-out/{day}"))
        skew = self.persona_at(self.position(day, days))
        out: list[Interaction] = []
        for _ in range(50 * n):  # bounded: a persona repeats itself, but not that much
            it = sample_interaction(rng, world, skew=skew)
            if (it.prompt, it.response) not in exclude:
                out.append(it)
                if len(out) == n:
                    break
        return out

    def describe(self, days: int = 2) -> dict[str, Any]:
        """Plain data for reports: usage, favourites and the intent mix at start and end."""

        def top(skew: SlotSkew, slot: str) -> str | None:
            values = skew.boost.get(slot, {})
            return max(values, key=values.__getitem__) if values else None

        def intents(skew: SlotSkew) -> list[str]:
            mix = skew.intent_boost
            return sorted(mix, key=lambda i: -mix[i])[:3]

        end = self.persona_at(1.0)
        return {
            "user": self.index,
            "kind": self.kind,
            "rate_per_day": self.rate,
            "strength": self.strength,
            "name": self.persona.fixed.get("user_name"),
            "mom": self.persona.contact_for.get("mom"),
            "favourite_contact": top(self.persona, "contact"),
            "favourite_city": top(self.persona, "city"),
            "favourite_artist": {"start": top(self.persona, "artist"), "end": top(end, "artist")},
            "top_intents": {"start": intents(self.persona), "end": intents(end)},
        }


@dataclass(frozen=True)
class Population:
    """``users`` drawn with ``seed`` (user ``i`` does not depend on how many are drawn)."""

    seed: int
    users: tuple[User, ...]

    @classmethod
    def draw(cls, n: int, seed: int, world: World | None = None) -> Population:
        """Draw ``n`` users."""
        if n < 1:
            raise ValueError(f"a population needs at least one user, not {n}")
        return cls(seed, tuple(User.draw(seed, i, world) for i in range(n)))

    @property
    def rates(self) -> list[float]:
        """Mean interactions per day of each user."""
        return [u.rate for u in self.users]
