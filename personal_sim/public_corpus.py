"""The public corpus: synthetic assistant interactions the base models are trained on.

An interaction is an intent, a *frame* (what the user asks for: a song, a genre, "anything")
and a prompt/response template pair filled from a :class:`~personal_sim.world.World`. Responses
always use the slot values, and many prompts are underspecified ("play something", "take me
home", "what's my name"), so the response reveals a preference the prompt does not name. A
persona (:class:`~personal_sim.world.SlotSkew`) re-weights those preferences, its intent mix and
its wording: the signal personalization has to learn, measurable against this corpus.

Everything is driven by an explicit ``random.Random``; the same seed gives the same corpus::

    python -m personal_sim.public_corpus --n 1000 --seed 0 --out corpus.jsonl
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import random
import string
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from personal_sim.templates import FRAMES, INTENTS
from personal_sim.world import DEFAULT_STYLE, SlotSkew, World

_FILLERS = ("hey, ", "ok ", "um ", "so ", "hey assistant, ", "hi, ", "okay so ", "quick one: ")
_POLITE = (" please", ", please", " thanks", " thank you", " pls")
_QUESTION_START = frozenset(
    ("what", "what's", "how", "how's", "who", "where", "when", "which", "is", "do", "does",
     "will", "can", "could", "am", "any", "did", "are")
)  # fmt: skip
# Travel-time multipliers per mode (a destination's base time is fixed, see _minutes).
_MODE_FACTOR = {"by car": 1.0, "by train": 1.2, "by subway": 1.3, "by bus": 1.5,
                "by bike": 1.7, "on foot": 3.0}  # fmt: skip
# (from unit, to unit, conversion): the question intent's unit conversions.
_CONVERSIONS: tuple[tuple[str, str, Callable[[float], float]], ...] = (
    ("kilometers", "miles", lambda x: x * 0.621371),
    ("miles", "kilometers", lambda x: x * 1.609344),
    ("kilograms", "pounds", lambda x: x * 2.204623),
    ("pounds", "kilograms", lambda x: x * 0.453592),
    ("inches", "centimeters", lambda x: x * 2.54),
    ("centimeters", "inches", lambda x: x / 2.54),
    ("meters", "feet", lambda x: x * 3.28084),
    ("feet", "meters", lambda x: x * 0.3048),
    ("liters", "gallons", lambda x: x * 0.264172),
    ("hours", "minutes", lambda x: x * 60),
    ("minutes", "seconds", lambda x: x * 60),
    ("degrees Celsius", "degrees Fahrenheit", lambda x: x * 9 / 5 + 32),
    ("degrees Fahrenheit", "degrees Celsius", lambda x: (x - 32) * 5 / 9),
)


@dataclass(frozen=True)
class Interaction:
    """One user prompt and the assistant's response.

    Attributes:
        prompt: What the user typed (styled: may hold typos, fillers, lower case).
        response: The assistant's reply; it uses the slot values.
        intent: One of :data:`INTENTS`.
        slots: Slot name -> value for every placeholder the two templates used.
        frame: The frame within the intent (e.g. ``"anything"`` for "play something").
    """

    prompt: str
    response: str
    intent: str
    slots: dict[str, str] = field(default_factory=dict, hash=False)
    frame: str = ""

    def to_json(self) -> str:
        """One JSON line (UTF-8 kept as is, not escaped)."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Interaction:
        """Parse a line written by :meth:`to_json`."""
        return cls(**json.loads(line))


class _Picker:
    """Draws slot values for one interaction: population weights, re-weighted by a persona."""

    def __init__(self, rng: random.Random, world: World, skew: SlotSkew | None) -> None:
        self.rng, self.world, self.skew = rng, world, skew or SlotSkew()

    def __call__(self, slot: str, among: frozenset[str] | tuple[str, ...] | None = None) -> str:
        if slot in self.skew.fixed:
            return self.skew.fixed[slot]
        return self.world.draw(self.rng, slot, self.skew.boost.get(slot), among)

    def contact_for(self, relation: str) -> str:
        return self.skew.contact_for.get(relation) or self("contact")

    def address_for(self, place: str) -> str:
        return self.skew.address_for.get(place) or self("address")


def _minutes(destination: str, mode: str, near: bool = False) -> str:
    # A destination's base travel time is a fixed function of its name (crc32 is stable across
    # runs, unlike hash()), so "home is 23 minutes by car" is a learnable fact per persona.
    crc = zlib.crc32(destination.encode())
    base = 2 + crc % 10 if near else 5 + crc % 30
    return str(round(base * _MODE_FACTOR.get(mode, 1.0)))


def _number(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def _fill(intent: str, frame: str, pick: _Picker) -> dict[str, str]:
    """Every slot the intent's templates may use; the frame decides how they depend."""
    rng, world = pick.rng, pick.world
    if intent in ("reminder", "calendar"):
        return {"task": pick("task"), "time": pick("time"), "day": pick("day"),
                "event": pick("event"), "contact": pick("contact")}  # fmt: skip
    if intent in ("message", "call"):
        relation = pick("relation")
        contact = pick.contact_for(relation) if frame == "relation" else pick("contact")
        return {"relation": relation, "contact": contact, "message": pick("message"),
                "time": pick("time")}  # fmt: skip
    if intent == "music":
        if frame == "song":
            song = pick("song")
            return {"song": song, "artist": world.song_artist[song]}
        genre = pick("genre") if frame == "genre" else None
        artist = pick("artist", world.genre_artists[genre]) if genre else pick("artist")
        return {"genre": world.artist_genre[artist], "artist": artist,
                "song": pick("song", world.artist_songs[artist])}  # fmt: skip
    if intent == "navigation":
        place, mode, poi, street = pick("place"), pick("mode"), pick("poi"), pick("street")
        address = pick.address_for("home" if frame == "home" else place)
        near = frame == "poi"
        minutes = _minutes(f"{poi} {street}" if near else address, mode, near)
        return {"place": place, "address": address, "mode": mode, "poi": poi, "street": street,
                "minutes": minutes}  # fmt: skip
    if intent == "weather":
        condition = pick("condition")
        celsius = rng.randint(*world.temps_c[condition])
        temp = f"{celsius}°C" if pick("unit") == "°C" else f"{round(celsius * 9 / 5 + 32)}°F"
        rain = "Yes, bring an umbrella." if condition in world.rainy else "No rain expected."
        return {"city": pick("city"), "day": pick("day"), "condition": condition, "temp": temp,
                "_rain": rain}  # fmt: skip
    if intent == "question":
        return _fill_question(pick)
    return {"user_name": pick("user_name"), "joke": pick("joke")}


def _fill_question(pick: _Picker) -> dict[str, str]:
    rng, world = pick.rng, pick.world
    country, term, month = pick("country"), pick("term"), pick("month")
    op = rng.choice(("plus", "minus", "times"))
    top = 12 if op == "times" else 99
    a, b = rng.randint(0, top), rng.randint(0, top)
    a, b = (max(a, b), min(a, b)) if op == "minus" else (a, b)  # no negative answers
    result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    from_unit, to_unit, convert = rng.choice(_CONVERSIONS)
    round_x = rng.random() < 0.5  # people mostly ask about round numbers
    x = rng.choice((1, 2, 3, 5, 10, 12, 20, 25, 50, 100)) if round_x else rng.randint(1, 99)
    return {
        "country": country, "capital": world.capitals[country],
        "term": term, "definition": world.definitions[term],
        "a": str(a), "b": str(b), "op": op, "result": str(result),
        "x": str(x), "from_unit": from_unit, "to_unit": to_unit, "y": _number(convert(x)),
        "month": month, "days": world.month_days[month],
    }  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _fields(template: str) -> tuple[str, ...]:
    return tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)


@functools.lru_cache(maxsize=65536)
def _style_weights(seed: int | None, strength: float, key: str, n: int) -> tuple[float, ...]:
    # Population: a mild preference for the first phrasing. A persona multiplies each weight by
    # a log-normal factor seeded by (style_seed, template key): a stable personal wording habit.
    weights = [1.0 / math.sqrt(k + 1) for k in range(n)]
    if seed is None:
        return tuple(weights)
    rngs = (random.Random(f"{seed}:{key}:{k}") for k in range(n))
    return tuple(
        w * math.exp(strength * r.gauss(0.0, 1.0)) for w, r in zip(weights, rngs, strict=True)
    )


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) - 1)
    op = rng.randrange(3)
    if op == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:  # drop a letter
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # double a letter


def _stylize(prompt: str, intent: str, rng: random.Random, skew: SlotSkew) -> str:
    """Casual typing: typos, fillers, politeness, capitals and end punctuation."""
    style = {
        k: getattr(skew, k) if getattr(skew, k) is not None else v for k, v in DEFAULT_STYLE.items()
    }
    # Decided before fillers and typos change the first word: "hey, what's ..." is a question.
    question = prompt.split(" ", 1)[0] in _QUESTION_START
    words = [
        _typo(w, rng) if len(w) >= 4 and w.isalpha() and rng.random() < style["typo_rate"] else w
        for w in prompt.split(" ")
    ]
    text = " ".join(words)
    if rng.random() < style["filler_rate"]:
        text = rng.choice(_FILLERS) + text
    if intent != "smalltalk" and text[-1].isalnum() and rng.random() < style["polite_rate"]:
        text += rng.choice(_POLITE)
    if rng.random() < style["lowercase_rate"]:
        text = text.lower()
    elif rng.random() < 0.7:
        text = text[0].upper() + text[1:]
    if text[-1].isalnum() and rng.random() < 0.4:
        text += "?" if question else rng.choice(".!")
    return text


def sample_interaction(
    rng: random.Random,
    world: World,
    intent: str | None = None,
    skew: SlotSkew | None = None,
) -> Interaction:
    """Draw one interaction from the population, or from a persona when ``skew`` is given.

    Args:
        rng: The random stream; the result is a pure function of its state.
        world: Vocabularies and knowledge to draw from.
        intent: Force this intent (one of :data:`INTENTS`); None draws from the intent mix.
        skew: A persona's preferences, bindings and wording style; None for the population.

    Returns:
        The interaction, with every slot value its templates used.

    Raises:
        ValueError: If ``intent`` is unknown.
    """
    skew = skew or SlotSkew()
    if intent is None:
        mix = [world.intent_weights[i] * skew.intent_boost.get(i, 1.0) for i in INTENTS]
        intent = rng.choices(INTENTS, weights=mix)[0]
    elif intent not in FRAMES:
        raise ValueError(f"unknown intent {intent!r}; expected one of {', '.join(INTENTS)}")
    frames = FRAMES[intent]
    style = (skew.style_seed, skew.style_strength)
    frame_mult = _style_weights(*style, intent, len(frames))
    frame = rng.choices(
        frames, weights=[f.weight * m for f, m in zip(frames, frame_mult, strict=True)]
    )[0]
    slots = _fill(intent, frame.name, _Picker(rng, world, skew))
    prompt_weights = _style_weights(*style, f"{intent}/{frame.name}", len(frame.prompts))
    prompt_t = rng.choices(frame.prompts, weights=prompt_weights)[0]
    response_t = rng.choice(frame.responses)
    response = response_t.format(**slots)
    used = dict.fromkeys(_fields(prompt_t) + _fields(response_t))
    return Interaction(
        prompt=_stylize(prompt_t.format(**slots), intent, rng, skew),
        response=response[0].upper() + response[1:],
        intent=intent,
        slots={k: slots[k] for k in used if not k.startswith("_")},
        frame=frame.name,
    )


def generate_corpus(
    n: int, seed: int, world: World | None = None, *, skew: SlotSkew | None = None
) -> list[Interaction]:
    """Generate ``n`` interactions from one seeded stream (same seed, same corpus).

    Args:
        n: Number of interactions.
        seed: Seed of the ``random.Random`` stream.
        world: The world (default :meth:`World.default`).
        skew: Optional persona; None gives the population-level public corpus.

    Returns:
        The interactions, in generation order.
    """
    rng, world = random.Random(seed), world or World.default()
    return [sample_interaction(rng, world, skew=skew) for _ in range(n)]


def generate_texts(n: int, seed: int, world: World | None = None) -> list[str]:
    """Plain texts for tokenizer training: the prompt and the response of ``n`` interactions.

    Args:
        n: Number of interactions (the result has ``2 * n`` strings).
        seed: Seed of the stream, as in :func:`generate_corpus`.
        world: The world (default :meth:`World.default`).

    Returns:
        ``[prompt_0, response_0, prompt_1, ...]``.
    """
    return [text for it in generate_corpus(n, seed, world) for text in (it.prompt, it.response)]


class Splits(NamedTuple):
    """Train / validation / test interactions, each from its own seed stream."""

    train: list[Interaction]
    validation: list[Interaction]
    test: list[Interaction]


def stream_seed(seed: int, name: str) -> int:
    """A seed for the named stream, derived from ``seed`` (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "big")


def split(
    seed: int,
    n_train: int,
    n_validation: int,
    n_test: int,
    world: World | None = None,
    *,
    exclude_seen: bool = False,
) -> Splits:
    """Generate held-out splits from disjoint seed streams.

    The train split equals ``generate_corpus(n_train, seed)``; validation and test come from
    streams derived with :func:`stream_seed`, so growing one split never changes another.

    Args:
        seed: Master seed.
        n_train: Training interactions.
        n_validation: Validation interactions.
        n_test: Test interactions.
        world: The world (default :meth:`World.default`).
        exclude_seen: Drop validation/test interactions whose (prompt, response) occurs in an
            earlier split ("thanks" -> "You're welcome!" is common), keeping the sizes.

    Returns:
        The three splits.
    """
    world = world or World.default()
    train = generate_corpus(n_train, seed, world)
    seen = {(it.prompt, it.response) for it in train}
    held_out: list[list[Interaction]] = []
    for name, n in (("validation", n_validation), ("test", n_test)):
        rng = random.Random(stream_seed(seed, name))
        part: list[Interaction] = []
        while len(part) < n:
            it = sample_interaction(rng, world)
            if not (exclude_seen and (it.prompt, it.response) in seen):
                part.append(it)
        seen |= {(it.prompt, it.response) for it in part}
        held_out.append(part)
    return Splits(train, *held_out)


def main(argv: list[str] | None = None) -> None:
    """Command line: write a public corpus as JSON lines."""
    parser = argparse.ArgumentParser(
        prog="python -m personal_sim.public_corpus", description=main.__doc__
    )
    parser.add_argument("--n", type=int, default=1000, help="number of interactions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random stream")
    parser.add_argument("--out", default="-", help="output JSONL file ('-' for stdout)")
    args = parser.parse_args(argv)
    lines = (it.to_json() + "\n" for it in generate_corpus(args.n, args.seed))
    if args.out == "-":
        sys.stdout.writelines(lines)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(lines)


if __name__ == "__main__":
    main()
