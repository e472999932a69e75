"""The public corpus: synthetic assistant interactions the base models are trained on.

An interaction is an intent, a *frame* (what the user asks for: a song, a genre, "anything")
and a prompt/response template pair filled from a :class:`~simulators.world.World`. Responses
always use the slot values, and many prompts are underspecified ("play something", "take me
home", "what's my name"), so the response reveals a preference the prompt does not name. A
persona (:class:`~simulators.world.SlotSkew`) re-weights those preferences, its intent mix and
its wording: the signal personalization has to learn, measurable against this corpus.

Everything is driven by an explicit ``random.Random``; the same seed gives the same corpus::

    python -m simulators.public_corpus --n 1000 --seed 0 --out corpus.jsonl
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

from simulators.world import DEFAULT_STYLE, SlotSkew, World

# Template language: "## intent", "@frame weight", prompt lines (alternatives split by " | ")
# and "> " response lines. Lower-case prompts; styling (capitals, fillers, typos) comes later.
_TEMPLATES = """
## reminder
@task_time 3
remind me to {task} at {time} | set a reminder to {task} at {time} | at {time} remind me to {task}
can you remind me to {task} at {time}? | please remind me at {time} to {task}
reminder: {task} at {time} | i need a reminder at {time} to {task} | remind me at {time} to {task}
> Okay, I'll remind you to {task} at {time}. | Reminder set for {time}: {task}.
> Got it. At {time} I'll remind you to {task}. | Sure! I'll remind you at {time} to {task}.
@task_day_time 2
remind me to {task} {day} at {time} | set a reminder for {day} at {time} to {task}
{day} at {time} remind me to {task} | can you remind me {day} at {time} to {task}?
> Okay, I'll remind you to {task} {day} at {time}. | Reminder set for {day} at {time}: {task}.
@task_only 2
remind me to {task} | add a reminder to {task} | don't let me forget to {task}
reminder to {task} | i need to remember to {task} | remind me later to {task}
> Sure, I'll remind you to {task} at {time}. | Reminder set: {task}, {day} at {time}.
@list 1
what are my reminders {day} | any reminders {day}? | what did i ask you to remind me about
> You have one reminder {day}: {task} at {time}. | {day} at {time}: {task}.
## message
@contact 4
text {contact} {message} | send a message to {contact} saying {message} | tell {contact} {message}
message {contact}: {message} | send {contact} a text: {message} | whatsapp {contact} {message}
shoot {contact} a message saying {message} | can you text {contact}: {message}
> Sent to {contact}: "{message}" | Okay, I texted {contact}: "{message}"
> Message to {contact} sent: "{message}" | Done. {contact} will get: "{message}"
@relation 2
text my {relation} {message} | send a message to my {relation} saying {message}
tell my {relation} {message} | message my {relation}: {message} | text {relation} {message}
> Sent to your {relation}, {contact}: "{message}" | Okay, I texted {contact}: "{message}"
@read 1
read my messages | any new texts? | did anyone text me | what did {contact} say
check my messages | read me the last message
> You have a new message from {contact}: "{message}" | {contact} wrote: "{message}"
## call
@contact 4
call {contact} | phone {contact} | ring {contact} | give {contact} a call | can you call {contact}?
please call {contact} | dial {contact} | get {contact} on the phone | call {contact} now
> Calling {contact}. | Calling {contact} now. | Okay, calling {contact}. | Dialing {contact}...
@relation 3
call my {relation} | call {relation} | ring my {relation} | phone my {relation}
i want to talk to my {relation} | get my {relation} on the phone | can you call my {relation}?
> Calling your {relation}, {contact}. | Calling {contact} ({relation}). | Okay, calling {contact}.
@video 1
facetime {contact} | video call {contact} | start a video call with {contact}
video chat with {contact} | can you facetime {contact}?
> Starting a video call with {contact}. | Video calling {contact}...
@missed 1
who called me | did i miss any calls? | any missed calls | who was that calling
> You missed a call from {contact} at {time}. | {contact} called at {time}.
## music
@artist 4
play {artist} | play some {artist} | put on {artist} | i want to hear {artist}
can you play {artist}? | play music by {artist} | shuffle {artist} | play something by {artist}
> Playing {song} by {artist}. | Here's {artist}: {song}. | Now playing {song} by {artist}.
@song 2
play {song} | play the song {song} | i wanna hear {song} | can you play {song}? | put on {song}
> Playing {song} by {artist}. | Here's {song} by {artist}. | Now playing {song} by {artist}.
@genre 3
play some {genre} | play {genre} music | put on some {genre} | i'm in the mood for {genre}
play a {genre} playlist | can you play some {genre}? | i feel like listening to {genre}
> Playing {genre}: {song} by {artist}. | Here's some {genre}, starting with {song} by {artist}.
@anything 3
play some music | play something | play music | put on some tunes | surprise me with a song
play my favorites | i need some music | play something good | music please
> Playing {song} by {artist}. | How about {artist}? Playing {song}. | Here's {song} by {artist}.
@current 1
what song is this | what's playing | who sings this | what's this song called
> This is {song} by {artist}. | You're listening to {song} by {artist}.
## navigation
@place 4
take me to {place} | navigate to {place} | directions to {place} | how do i get to {place}
get me to {place} | start navigation to {place} | route to {place} | let's go to {place}
> Starting directions to {place} at {address}, about {minutes} minutes {mode}.
> Heading to {place} ({address}). It's {minutes} minutes {mode}.
@home 3
take me home | navigate home | directions home | get me home | let's go home | home please
> Heading home to {address}: about {minutes} minutes {mode}.
> Starting directions home to {address}, {minutes} minutes {mode}.
@eta 2
how long to get to {place} | how far is {place} | how long will it take to get to {place}
how long to {place}? | what's my eta to {place}
> About {minutes} minutes {mode} to {place}. | {place} is {minutes} minutes away {mode}.
@poi 2
find the nearest {poi} | where's the closest {poi} | is there a {poi} nearby
i need a {poi} | take me to a {poi} | any {poi} around here?
> The nearest {poi} is on {street}, {minutes} minutes {mode}. | There's a {poi} on {street}.
@address 1
navigate to {address} | take me to {address} | directions to {address} | drive to {address}
> Starting directions to {address}, about {minutes} minutes {mode}.
## calendar
@add_with 3
add {event} with {contact} {day} at {time} | schedule {event} with {contact} {day} at {time}
put {event} with {contact} on my calendar for {day} at {time}
set up {event} with {contact} {day} at {time} | book {event} with {contact} {day} at {time}
> Added {event} with {contact} {day} at {time}. | Done: {event} with {contact}, {day} at {time}.
> Okay, {event} with {contact} is on your calendar for {day} at {time}.
@add 2
add {event} to my calendar {day} at {time} | schedule {event} {day} at {time}
put {event} on my calendar for {day} at {time} | i have {event} {day} at {time}
> Added {event} {day} at {time}. | Okay, {event} is on your calendar for {day} at {time}.
@query 3
what's on my calendar {day} | what do i have {day} | am i free {day} | what's my schedule {day}
do i have anything {day} | any meetings {day}? | what's happening {day}
> {day}, you have {event} at {time}. | You have {event} with {contact} {day} at {time}.
@next 1
when is my next {event} | when's my {event} | what time is my {event}
> Your next {event} is {day} at {time}. | Your {event} is {day} at {time}.
@cancel 1
cancel my {event} {day} | delete the {event} {day} | remove {event} from {day}
> Cancelled your {event} {day}. | Okay, I removed {event} from {day}.
@move 1
move my {event} to {day} at {time} | reschedule my {event} to {day} at {time}
> Moved your {event} to {day} at {time}. | Done, {event} is now {day} at {time}.
## weather
@city 3
what's the weather in {city} {day} | weather {city} {day} | how's the weather in {city} {day}?
what's it like in {city} {day} | forecast for {city} {day} | will it be cold in {city} {day}
> {day} in {city}: {condition}, {temp}. | It'll be {condition} in {city} {day}, around {temp}.
> The forecast for {city} {day} is {condition} with a high of {temp}.
@here 3
what's the weather {day} | weather {day} | how's the weather looking | do i need a jacket {day}
what's the forecast | is it going to be hot {day} | how cold is it {day}
> {day} in {city}: {condition}, {temp}. | In {city} it will be {condition} {day}, around {temp}.
@rain 2
will it rain {day} | will it rain in {city} {day}? | do i need an umbrella {day}
is it going to rain {day} | should i bring an umbrella {day}
> {_rain} {day} in {city}: {condition}, {temp}.
## question
@capital 4
what's the capital of {country} | what is the capital of {country}? | capital of {country}
tell me the capital of {country} | do you know the capital of {country}?
which city is the capital of {country}
> The capital of {country} is {capital}. | {capital} is the capital of {country}.
@capital_of 1
{capital} is the capital of which country? | which country has {capital} as its capital
> {capital} is the capital of {country}.
@define 3
what is {term} | define {term} | what's {term}? | can you explain what {term} is
tell me what {term} is | what does {term} mean
> {term} is {definition}. | Simply put, {term} is {definition}.
@arithmetic 3
what is {a} {op} {b} | what's {a} {op} {b}? | {a} {op} {b} | calculate {a} {op} {b}
quick math: {a} {op} {b} | how much is {a} {op} {b}
> {a} {op} {b} is {result}. | The answer is {result}. | That's {result}.
@convert 3
how many {to_unit} is {x} {from_unit} | convert {x} {from_unit} to {to_unit}
{x} {from_unit} in {to_unit} | what's {x} {from_unit} in {to_unit}?
> {x} {from_unit} is about {y} {to_unit}. | That's about {y} {to_unit}.
@month 1
how many days are in {month} | how many days does {month} have | how long is {month}
> {month} has {days}.
## smalltalk
@greeting 3
hi | hello | hey there | good morning | hey | hi assistant | yo | morning
> Hi {user_name}! How can I help? | Hello, {user_name}. What can I do for you? | Hey {user_name}!
@how_are_you 2
how are you | how's it going? | how are you doing today | what's up
> I'm doing well, thanks for asking, {user_name}! | All good here. What can I do for you?
@thanks 2
thanks | thank you | thanks a lot | thank you so much | cheers | ty | great, thanks
> You're welcome! | Anytime, {user_name}. | Happy to help, {user_name}.
@joke 2
tell me a joke | make me laugh | know any jokes? | i need a laugh | say something funny
> {joke} | Here's one: {joke}
@name 1
my name is {user_name} | call me {user_name} | i'm {user_name} | you can call me {user_name}
> Nice to meet you, {user_name}! | Got it, I'll call you {user_name}.
@whoami 1
what's my name | do you know my name? | who am i | say my name
> You're {user_name}. | Your name is {user_name}.
@bye 1
bye | good night | see you later | talk to you later | that's all
> Goodbye, {user_name}! | See you later! | Good night, {user_name}. Sleep well.
@help 1
what can you do | help | what are you able to do? | how can you help me
> I can set reminders, send messages, make calls, play music, give directions, manage your \
calendar, check the weather and answer questions.
"""


@dataclass(frozen=True)
class Frame:
    """One thing a user can ask within an intent, with its prompt and response templates."""

    intent: str
    name: str
    weight: float
    prompts: tuple[str, ...]
    responses: tuple[str, ...]


def _parse_templates(text: str) -> dict[str, tuple[Frame, ...]]:
    frames: dict[str, list[Frame]] = {}
    intent, name, weight = "", "", 0.0
    prompts: list[str] = []
    responses: list[str] = []

    def flush() -> None:
        if name:
            frames[intent].append(Frame(intent, name, weight, tuple(prompts), tuple(responses)))

    for line in text.replace("\\\n", "").strip().splitlines():
        if line.startswith("## "):
            flush()
            intent, name = line[3:], ""
            frames[intent] = []
        elif line.startswith("@"):
            flush()
            name, weight_text = line[1:].split()
            weight, prompts, responses = float(weight_text), [], []
        else:
            target = responses if line.startswith("> ") else prompts
            target += [t.strip() for t in line.removeprefix("> ").split(" | ")]
    flush()
    return {k: tuple(v) for k, v in frames.items()}


#: Intent -> its frames, parsed once from the template text above.
FRAMES: dict[str, tuple[Frame, ...]] = _parse_templates(_TEMPLATES)
INTENTS: tuple[str, ...] = tuple(FRAMES)

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
        prog="python -m simulators.public_corpus", description=main.__doc__
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
