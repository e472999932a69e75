"""The synthetic world that public and personal data are drawn from.

A :class:`World` holds every slot vocabulary (contacts, places, artists, ...) with a
population-level popularity: values are listed most popular first and weighted Zipf-like
(``1 / rank**s``), so a few names, artists and cities dominate, as in real usage. It also
holds the small knowledge base that the *question* intent answers from (capitals,
definitions, an artist -> genre/songs catalog). Personas later re-weight these same
vocabularies (see ``personal_sim.public_corpus.SlotSkew``), which is what makes personalization
measurable: a persona's favourite contact is a population value with a boosted weight.

The tables are packed as one string per vocabulary ("|"-separated) to keep them readable.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field


def _table(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.replace("\n", "|").split("|") if v.strip())


# Most popular first. Some accented names, so that byte-level BPE meets multi-byte UTF-8.
_CONTACTS = _table("""
Maya|Liam|Olivia|Noah|Emma|Lucas|Sofía|Ethan|Ava|Mateo|Chloé|James|Mia|Daniel|Zoë|Leo|Grace|
Omar|Hannah|José|Nora|Samuel|Lily|Ben|Aisha|Jack|Elena|Adam|Ruby|Kenji|Isla|Marco|Priya|Oscar|
Léa|Tom|Amara|Felix|Clara|Diego|Ines|Hugo|Freya|Ravi|Sara|Theo|Yuki|Max|Renée|Luis|Anna|Kofi|
Julia|Arjun|Emily|Chen|Nadia|Sam|Lucía|Finn|Layla|Andrés|Eva|Tariq|Rosa|Will|Mei|Jonas|Ana|Ivan|
Ella|Kai|Fatima|Niko|Beth|Rafael|Maren|Pablo|Jade|Tobias|Noémie|Amir|Iris|Carlos|Heidi|Dev|Alice|
Iñaki|Lena|Bruno|Maeve|Yusuf|Camille|Eli|Greta|Joaquín|Hana|Victor|Selin|Owen|Paula|Malik|Vera|
Marta|Ahmed|Lou|Dmitri|June|Sean|Ingrid|Raúl|Tess|Kwame|Olga|Ian|Begoña|Nils|Rhea|Stefan|Aiko|
Gabe|Elif|Joël|Nina|Pedro|Wren|Ezra|Leila|Björn|Anya|Cole|Thandi|Matías|Bea|Rory|Ximena|Hamza""")
_RELATIONS = _table("""
mom|dad|sister|brother|wife|husband|partner|best friend|boss|grandma|grandpa|son|daughter|
girlfriend|boyfriend|roommate|aunt|uncle|cousin|neighbor|coach|doctor|babysitter|landlord""")
# Named places a person goes to ("home" is handled separately: "take me home").
_PLACES = _table("""
work|the office|the gym|school|the airport|the train station|the supermarket|the park|
the kids' school|the university|the hospital|the clinic|the library|the mall|the pool|
the studio|the dentist|the bus stop|the climbing gym|the farmers market|the stadium|church|
the community center|the yoga studio|the dog park|the beach|the garden center|daycare""")
_STREETS = _table("""
Maple Street|Oak Avenue|Main Street|Cedar Lane|Park Road|Elm Street|Pine Avenue|Lake Drive|
Hill Road|River Street|Church Lane|Mill Road|Station Road|Rue Lafayette|Calle Mayor|
Sunset Boulevard|Harbor Way|King Street|Queen Street|Bridge Road|Orchard Lane|Willow Way|
High Street|Chestnut Street|Rose Court|Avenida Sol|Garden Row|Market Street|Spring Street|
North Road|Rue des Écoles|Birch Close|Valley View|Meadow Lane|Canal Street|Forest Drive""")
_CITIES = _table("""
London|New York|Paris|Tokyo|Berlin|Madrid|Toronto|Sydney|Chicago|Rome|Amsterdam|Seattle|
Barcelona|Mumbai|San Francisco|Dublin|Boston|Lisbon|Mexico City|Seoul|Vienna|Singapore|
Los Angeles|Montréal|Stockholm|Austin|Cape Town|Nairobi|Lagos|São Paulo|Buenos Aires|Denver|
Istanbul|Prague|Copenhagen|Oslo|Helsinki|Athens|Cairo|Bangkok|Manila|Jakarta|Osaka|Munich|
Zürich|Melbourne|Vancouver|Portland|Miami|Atlanta|Edinburgh|Manchester|Lyon|Kraków|Warsaw|
Budapest|Bogotá|Lima|Santiago|Auckland|Hanoi|Delhi|Bangalore|Dubai|Marrakesh|Reykjavík|Porto|
Seville|Naples|Milan|Hamburg|Brussels|Geneva|Nice|Quebec City|Phoenix|Nashville|Kyoto""")
_CAPITALS = dict(
    pair.split(":")
    for pair in _table("""
France:Paris|Japan:Tokyo|Germany:Berlin|Spain:Madrid|Italy:Rome|Canada:Ottawa|
Australia:Canberra|Brazil:Brasília|Mexico:Mexico City|India:New Delhi|China:Beijing|
Egypt:Cairo|Kenya:Nairobi|Nigeria:Abuja|Argentina:Buenos Aires|Chile:Santiago|Peru:Lima|
Colombia:Bogotá|Portugal:Lisbon|Ireland:Dublin|Norway:Oslo|Sweden:Stockholm|Finland:Helsinki|
Denmark:Copenhagen|Poland:Warsaw|Austria:Vienna|Switzerland:Bern|Belgium:Brussels|
the Netherlands:Amsterdam|Greece:Athens|Turkey:Ankara|Russia:Moscow|Ukraine:Kyiv|
South Korea:Seoul|Thailand:Bangkok|Vietnam:Hanoi|Indonesia:Jakarta|the Philippines:Manila|
New Zealand:Wellington|South Africa:Pretoria|Morocco:Rabat|Iceland:Reykjavík|Hungary:Budapest|
the Czech Republic:Prague|Romania:Bucharest|Cuba:Havana|Jamaica:Kingston|Ghana:Accra|
Ethiopia:Addis Ababa|Saudi Arabia:Riyadh|Iran:Tehran|Pakistan:Islamabad|Bangladesh:Dhaka|
Nepal:Kathmandu|Malaysia:Kuala Lumpur|Singapore:Singapore|Scotland:Edinburgh|Wales:Cardiff|
Venezuela:Caracas|Ecuador:Quito|Uruguay:Montevideo|Paraguay:Asunción|Bolivia:Sucre|
Croatia:Zagreb|Serbia:Belgrade|Estonia:Tallinn|Latvia:Riga|Lithuania:Vilnius|Senegal:Dakar""")
)
_GENRES = _table("""
pop|rock|hip hop|jazz|classical|country|electronic|indie|r&b|lo-fi|folk|reggaeton|metal|
soul|blues|k-pop|ambient|funk|punk|latin|disco|house|reggae|bossa nova""")
# Artist names are synthetic: a first part and a second part, combined without repeats.
_ARTIST_A = _table("""
The Velvet|Midnight|Neon|Paper|Golden|Silver|Electric|Wild|Little|Lunar|Crimson|Hollow|Static|
Northern|Glass""")
_ARTIST_B = _table("""
Owls|Harbor|Foxes|Tides|Echo|Pines|Lanterns|Wolves|Satellites|Rivers|Gardens|Mirrors""")
_SOLO_ARTISTS = _table("""
Marisol Peña|DJ Kofi|Lena Björk|Aria Moon|Jules Renard|Kai Santos|Nova Reyes|Miles Okafor|
Céline Dufour|Tomás Ruiz|Hana Sato|Ezra Vale|Luna Ferrer|Otis Grant|Zara Quinn|Mateus Lima|
Ivy Larsen|Dario Conti|Noor Haddad|Felipe Ortega|Sienna Park|Rocco Bianchi|Yara Mendes|Eli Stone""")
_SONG_A = _table("""
Midnight|Paper|Summer|Broken|Golden|Electric|Quiet|Falling|Neon|Lost|Silver|Slow|Burning|Wild|
Empty|Gentle|Velvet|Distant|Sweet|Northern|Hidden|Restless|Crystal|Lonely""")
_SONG_B = _table("""
Hearts|Harbor|Rain|Lights|Dreams|Roads|Skies|Shadows|Waves|Fire|Streets|Letters|Gardens|
Stars|Echoes|Mornings|Rivers|Promises|Windows|Highways""")
_TIMES = _table("""
8 am|9 am|7 pm|6 pm|noon|5 pm|7 am|10 am|6:30 pm|3 pm|8 pm|9 pm|2 pm|4 pm|7:30 am|11 am|
6 am|8:30 am|1 pm|5:30 pm|midnight|9:30 am|10 pm|4:30 pm|12:30 pm|6:45 am|7:15 pm|3:30 pm|
11:30 am|2:30 pm|8:15 am|9:15 pm|5:45 pm|10:30 am|1:30 pm|5 am|11 pm|4:15 pm|8:45 pm|3:45 pm""")
_DAYS = _table("""
tomorrow|today|tonight|Monday|Friday|this evening|tomorrow morning|Saturday|Wednesday|
Tuesday|Thursday|Sunday|this afternoon|this weekend|next Monday|tomorrow evening|next Friday|
next week|tomorrow afternoon|next Tuesday|Saturday morning|Sunday evening|next Wednesday""")
_EVENTS = _table("""
meeting|dentist appointment|lunch|dinner|team standup|doctor's appointment|coffee|yoga class|
haircut|call|interview|soccer practice|piano lesson|book club|date night|gym session|
parent-teacher conference|project review|birthday party|brunch|flight|vet appointment|
car service|one-on-one|study group|band rehearsal|tennis match|movie night|therapy session|
job fair|wedding|team lunch|swim lesson|quarterly review|game night|volunteer shift""")
# Reminders are echoed back verbatim, so tasks avoid "my" (the echo would need "your").
_TASKS = _table("""
buy milk|call the dentist|take out the trash|water the plants|pay the rent|pick up the kids|
walk the dog|feed the cat|take the medicine|send the report|book a haircut|buy groceries|
renew the passport|charge the car|call the bank|pick up the dry cleaning|do the laundry|
submit the timesheet|back up the laptop|buy a birthday gift|return the library books|
order more coffee|check the mail|clean the kitchen|stretch|drink some water|pay the electric bill|
cancel the subscription|email the landlord|schedule the car service|buy flowers|
finish the slides|practice piano|pack the gym bag|defrost the chicken|empty the dishwasher|
call the plumber|update the budget|print the tickets|reply to the invitation|bring an umbrella|
move the car|order a pizza|refill the prescription|check the oven|buy dog food|
lock the back door|go to bed|meditate|take a break|stand up and stretch|buy stamps|
book the flights|confirm the reservation|read chapter five|water the garden|check on the laundry|
set the alarm|pack lunch|buy batteries|fix the bike tire|send the invoice|book a table""")
_MESSAGES = _table("""
I'm running late|on my way|see you soon|happy birthday!|can you call me back?|dinner is ready|
I'll be home by seven|thanks for today|don't forget the keys|I'm outside|love you|
good luck today!|running ten minutes behind|can we reschedule?|are you free tonight?|
I just landed|miss you|the meeting moved to three|let me know when you're home|I'm here|
call me when you can|can you pick up bread?|congrats!|see you at the gym|I'll bring dessert|
where are you?|almost there|sorry, can't talk right now|want to grab lunch?|good night|
the package arrived|I left the door open for you|text me the address|save me a seat|
feel better soon|how did it go?|we're out of milk|be there in five|traffic is terrible|
I got the tickets|thanks, you're the best|can't wait!|did you feed the cat?|all good here""")
_CONDITIONS = _table("""
sunny|partly cloudy|cloudy|light rain|clear|showers|windy|overcast|heavy rain|foggy|
thunderstorms|drizzle|light snow|snow|hot and humid|sleet""")
_RAINY = frozenset(_table("light rain|showers|heavy rain|thunderstorms|drizzle|sleet"))
# Plausible daytime highs in °C per condition, so forecasts are internally consistent.
_TEMPS_C = {
    "sunny": (18, 34), "partly cloudy": (12, 26), "cloudy": (8, 20), "light rain": (6, 18),
    "clear": (5, 25), "showers": (8, 20), "windy": (4, 18), "overcast": (6, 18),
    "heavy rain": (8, 18), "foggy": (2, 14), "thunderstorms": (16, 30), "drizzle": (6, 16),
    "light snow": (-6, 2), "snow": (-12, 0), "hot and humid": (27, 38), "sleet": (-2, 3),
}  # fmt: skip
_POIS = _table("""
coffee shop|gas station|pharmacy|supermarket|ATM|bakery|parking garage|pizza place|
post office|bank|hardware store|bookstore|EV charger|hospital|bike shop|laundromat|
sushi place|taco truck|ice cream shop|florist""")
_MODES = _table("by car|on foot|by bus|by bike|by train|by subway")
_DEFINITIONS = dict(
    pair.split(":", 1)
    for pair in _table("""
photosynthesis:the process plants use to turn sunlight, water and carbon dioxide into food|
gravity:the force that pulls objects toward each other|
a noun:a word that names a person, place or thing|
a verb:a word that describes an action or a state|
an adjective:a word that describes a noun|
democracy:a system of government where people choose their leaders by voting|
inflation:a general rise in prices over time|
a volcano:an opening in the ground where hot melted rock comes out|
an atom:the smallest unit of a chemical element|
a planet:a large body that orbits a star|
a mammal:a warm-blooded animal that feeds its young with milk|
an algorithm:a step-by-step procedure for solving a problem|
a haiku:a short poem with three lines of five, seven and five syllables|
evaporation:the change of a liquid into a gas|
a synonym:a word that means the same as another word|
an antonym:a word that means the opposite of another word|
a metaphor:a figure of speech that describes something as something else|
an ecosystem:a community of living things and their environment|
a budget:a plan for how to spend money|
a password:a secret word used to prove who you are|
a galaxy:a huge system of stars, gas and dust|
a recipe:a set of instructions for making a dish|
a prime number:a number greater than one divisible only by one and itself|
a calorie:a unit of energy in food|
a glacier:a slow-moving mass of ice|
an orbit:the curved path of one object around another|
a fossil:the preserved remains of an ancient living thing|
a virus:a tiny agent that can only copy itself inside living cells|
a mortgage:a loan used to buy a house|
a podcast:a series of audio episodes you can listen to online|
nostalgia:a fond longing for the past|
empathy:the ability to understand how someone else feels|
a thesaurus:a book that lists words with similar meanings|
a hurricane:a large storm with very strong winds|
a battery:a device that stores energy as chemical energy|
an island:a piece of land surrounded by water|
a desert:a very dry area that gets little rain|
a continent:one of the seven large land masses on Earth|
a fraction:a number that represents part of a whole|
a carnivore:an animal that eats meat""")
)
_JOKES = _table("""
Why did the scarecrow win an award? Because he was outstanding in his field.|
I told my computer a joke, but it didn't get it. It needed more bytes.|
Why don't eggs tell jokes? They'd crack each other up.|
What do you call a fake noodle? An impasta.|
Why did the bicycle fall over? It was two tired.|
What do you call a bear with no teeth? A gummy bear.|
Why can't you trust atoms? They make up everything.|
What did the ocean say to the beach? Nothing, it just waved.|
Why did the math book look sad? It had too many problems.|
How do you organize a space party? You planet.|
Why did the coffee file a police report? It got mugged.|
What do you call cheese that isn't yours? Nacho cheese.""")
_MONTH_DAYS = dict(
    pair.split(":")
    for pair in _table("""
January:31 days|February:28 days, or 29 in a leap year|March:31 days|April:30 days|
May:31 days|June:30 days|July:31 days|August:31 days|September:30 days|October:31 days|
November:30 days|December:31 days""")
)

#: Population-level intent mix (relative weights).
INTENT_WEIGHTS: dict[str, float] = {
    "question": 0.16,
    "music": 0.13,
    "message": 0.12,
    "reminder": 0.12,
    "weather": 0.10,
    "call": 0.10,
    "calendar": 0.10,
    "navigation": 0.09,
    "smalltalk": 0.08,
}


def _catalog() -> tuple[tuple[str, ...], dict[str, str], dict[str, tuple[str, ...]]]:
    # Artists interleave bands and solo names; each gets a genre and 3 songs by fixed
    # arithmetic (no RNG), so the catalog is identical on every machine and Python version.
    bands = [f"{a} {b}" for a, b in itertools.product(_ARTIST_A, _ARTIST_B)]
    bands = [bands[(i * 37) % len(bands)] for i in range(96)]  # 37 is coprime to 180
    artists = [a for pair in itertools.zip_longest(_SOLO_ARTISTS, bands) for a in pair if a]
    titles = [f"{a} {b}" for a, b in itertools.product(_SONG_A, _SONG_B)]
    step = 101  # coprime to 480 titles: a fixed permutation, no two artists share a song
    songs = {
        artist: tuple(titles[((3 * i + k) * step) % len(titles)] for k in range(3))
        for i, artist in enumerate(artists)
    }
    genres = {artist: _GENRES[(i * 7) % len(_GENRES)] for i, artist in enumerate(artists)}
    return tuple(artists), genres, songs


def _addresses() -> tuple[str, ...]:
    # Four house numbers per street, shifted per street, so all 144 addresses are distinct.
    numbers = (12, 4, 27, 150, 8, 33, 91, 5, 210, 18, 64, 7)
    n = len(_STREETS)
    return tuple(f"{numbers[(i + i // n) % 12]} {_STREETS[i % n]}" for i in range(4 * n))


@functools.lru_cache(maxsize=256)  # the curve depends on size and exponent only
def _zipf_cumulative(n: int, s: float) -> tuple[float, ...]:
    return tuple(itertools.accumulate(1.0 / (rank**s) for rank in range(1, n + 1)))


#: Population-level wording style: per-word typo rate, share of all lower-case prompts, of
#: prompts opening with a filler ("hey, ...") and of prompts ending politely ("... please").
DEFAULT_STYLE = {"typo_rate": 0.02, "lowercase_rate": 0.15, "filler_rate": 0.15, "polite_rate": 0.2}

#: Slots whose values are tied to the knowledge base; a persona cannot invent new ones.
CLOSED_SLOTS = frozenset(
    {"artist", "song", "genre", "country", "term", "month", "condition", "unit"}
)


@dataclass(frozen=True)
class World:
    """Slot vocabularies with Zipf popularity, plus the knowledge base answers come from.

    Attributes:
        vocab: Slot name -> values, most popular first.
        artist_genre: Artist -> genre.
        artist_songs: Artist -> their songs.
        capitals: Country -> capital city.
        definitions: Term -> one-line definition.
        month_days: Month -> its number of days, as text.
        rainy: Weather conditions that count as rain.
        temps_c: Condition -> plausible (low, high) temperature in °C.
        intent_weights: Population-level intent mix.
        zipf_s: Zipf exponent of the popularity weights (0 = uniform).
    """

    vocab: dict[str, tuple[str, ...]] = field(hash=False)
    artist_genre: dict[str, str] = field(hash=False)
    artist_songs: dict[str, tuple[str, ...]] = field(hash=False)
    capitals: dict[str, str] = field(hash=False)
    definitions: dict[str, str] = field(hash=False)
    month_days: dict[str, str] = field(hash=False)
    rainy: frozenset[str] = frozenset()
    temps_c: dict[str, tuple[int, int]] = field(default_factory=dict, hash=False)
    intent_weights: dict[str, float] = field(
        default_factory=lambda: dict(INTENT_WEIGHTS), hash=False
    )
    zipf_s: float = 1.0

    @classmethod
    @functools.cache
    def default(cls) -> World:
        """The standard world every base model and simulation uses (cached; treat as read-only)."""
        artists, genres, songs = _catalog()
        vocab = {
            "contact": _CONTACTS,
            # A different popularity order for the user's own name than for their contacts.
            "user_name": _CONTACTS[1::2] + _CONTACTS[::2],
            "relation": _RELATIONS,
            "place": _PLACES,
            "address": _addresses(),
            "street": _STREETS,
            "city": _CITIES,
            "country": tuple(_CAPITALS),
            "genre": _GENRES,
            "artist": artists,
            "song": tuple(s for a in artists for s in songs[a]),
            "time": _TIMES,
            "day": _DAYS,
            "event": _EVENTS,
            "task": _TASKS,
            "message": _MESSAGES,
            "condition": _CONDITIONS,
            "poi": _POIS,
            "mode": _MODES,
            "term": tuple(_DEFINITIONS),
            "joke": _JOKES,
            "month": tuple(_MONTH_DAYS),
            "unit": ("°C", "°F"),
        }
        knowledge = (dict(_CAPITALS), dict(_DEFINITIONS), dict(_MONTH_DAYS), _RAINY, dict(_TEMPS_C))
        return cls(vocab, genres, songs, *knowledge)

    def values(self, slot: str) -> tuple[str, ...]:
        """The values of ``slot``, most popular first."""
        return self.vocab[slot]

    def weights(self, slot: str) -> tuple[float, ...]:
        """Normalised population probabilities of the values of ``slot`` (same order)."""
        cum = self._cumulative(slot)
        return tuple((b - a) / cum[-1] for a, b in itertools.pairwise((0.0, *cum)))

    @functools.cached_property
    def song_artist(self) -> dict[str, str]:
        """Song -> the artist who sings it."""
        return {song: a for a, songs in self.artist_songs.items() for song in songs}

    @functools.cached_property
    def genre_artists(self) -> dict[str, frozenset[str]]:
        """Genre -> the artists who play it."""
        by_genre: dict[str, set[str]] = {}
        for artist, genre in self.artist_genre.items():
            by_genre.setdefault(genre, set()).add(artist)
        return {g: frozenset(a) for g, a in by_genre.items()}

    def draw(
        self,
        rng: random.Random,
        slot: str,
        boost: Mapping[str, float] | None = None,
        among: Collection[str] | None = None,
    ) -> str:
        """Draw one value of ``slot`` from the population distribution, optionally re-weighted.

        Args:
            rng: The random stream to draw from.
            slot: Slot name (a key of :attr:`vocab`).
            boost: Value -> weight multiplier (a persona's preferences). A value missing from
                the vocabulary (a contact nobody else has) joins with the rarest value's
                weight times its multiplier, except in :data:`CLOSED_SLOTS`.
            among: Restrict the draw to these values (e.g. artists of one genre).

        Returns:
            The drawn value.
        """
        values = self.vocab[slot]
        if not boost and among is None:  # the hot path: precomputed cumulative weights
            return rng.choices(values, cum_weights=self._cumulative(slot))[0]
        s = self.zipf_s
        pool = [(v, 1.0 / (r**s)) for r, v in enumerate(values, 1) if among is None or v in among]
        if boost:
            pool = [(v, w * boost.get(v, 1.0)) for v, w in pool]
            if among is None and slot not in CLOSED_SLOTS:
                rarest = 1.0 / (len(values) ** s)
                known = set(values)
                pool += [(v, rarest * m) for v, m in sorted(boost.items()) if v not in known]
        return rng.choices([v for v, _ in pool], weights=[w for _, w in pool])[0]

    def _cumulative(self, slot: str) -> tuple[float, ...]:
        return _zipf_cumulative(len(self.vocab[slot]), self.zipf_s)


@dataclass(frozen=True)
class SlotSkew:
    """How one persona departs from the population: what personalization should learn.

    Attributes:
        boost: Slot -> value -> weight multiplier (favourite contacts, artists, habits).
        fixed: Slot -> the one value this persona always uses (their name, temperature unit).
        contact_for: Relation -> contact ("mom" -> "Rosa"): who "call my mom" reaches.
        address_for: Place (or "home") -> address: where "take me home" goes.
        intent_boost: Intent -> multiplier on the population intent mix.
        style_seed: Seeds the persona's phrasing preferences (None: population phrasing).
        style_strength: Spread of those preferences (log-normal sigma of template weights).
        typo_rate: Probability of a typo per word (None: population default), and likewise
            ``lowercase_rate`` (all lower-case prompt), ``filler_rate`` ("hey, ...") and
            ``polite_rate`` ("... please").
    """

    boost: dict[str, dict[str, float]] = field(default_factory=dict, hash=False)
    fixed: dict[str, str] = field(default_factory=dict, hash=False)
    contact_for: dict[str, str] = field(default_factory=dict, hash=False)
    address_for: dict[str, str] = field(default_factory=dict, hash=False)
    intent_boost: dict[str, float] = field(default_factory=dict, hash=False)
    style_seed: int | None = None
    style_strength: float = 1.5
    typo_rate: float | None = None
    lowercase_rate: float | None = None
    filler_rate: float | None = None
    polite_rate: float | None = None

    @classmethod
    def random(
        cls, rng: random.Random, world: World | None = None, strength: float = 1.0
    ) -> SlotSkew:
        """Draw a plausible persona: a few favourites per slot, bindings, habits and a style.

        Args:
            rng: The random stream (the persona is a pure function of its state).
            world: The world to draw from (default :meth:`World.default`).
            strength: Scales every preference and style deviation; 0 leaves only the
                persona's name, temperature unit and bindings (contacts, addresses).

        Returns:
            The persona's skew.
        """
        world = world or World.default()
        # Slot -> multipliers of the persona's favourites, most favourite first.
        favourites = {"contact": (30, 15, 8, 4), "artist": (20, 10, 5), "genre": (8, 4),
                      "city": (40, 5), "place": (6, 3, 2), "task": (6, 6, 4, 3, 2),
                      "message": (8, 6, 4, 3), "event": (6, 4, 3, 2), "time": (8, 5, 3),
                      "poi": (5, 3), "mode": (10,), "country": (3, 3), "term": (3, 3)}  # fmt: skip
        boost = {}
        for slot, mults in favourites.items():
            picks = _distinct(rng, world, slot, len(mults))
            boost[slot] = {v: 1.0 + (m - 1.0) * strength for v, m in zip(picks, mults, strict=True)}
        relations = world.values("relation")
        places = ("home", *world.values("place"))
        contacts = _distinct(rng, world, "contact", len(relations), boost["contact"])
        lognormal = lambda sigma: math.exp(rng.gauss(0.0, sigma * strength))  # noqa: E731
        return cls(
            boost=boost,
            fixed={"user_name": world.draw(rng, "user_name"), "unit": world.draw(rng, "unit")},
            contact_for=dict(zip(relations, contacts, strict=True)),
            address_for=dict(
                zip(places, _distinct(rng, world, "address", len(places)), strict=True)
            ),
            intent_boost={intent: lognormal(0.5) for intent in sorted(world.intent_weights)},
            style_seed=rng.getrandbits(32),
            style_strength=1.5 * strength,
            **{k: min(1.0, rate * lognormal(0.8)) for k, rate in DEFAULT_STYLE.items()},
        )


def _distinct(
    rng: random.Random, world: World, slot: str, k: int, boost: Mapping[str, float] | None = None
) -> list[str]:
    # Popular values are more likely favourites, but a persona never repeats one.
    picked: list[str] = []
    while len(picked) < min(k, len(world.values(slot))):
        value = world.draw(rng, slot, boost)
        if value not in picked:
            picked.append(value)
    return picked
