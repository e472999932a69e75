"""The public corpus's templates: per intent, the frames users ask for and their wording.

Template language: ``## intent`` starts an intent, ``@frame weight`` a frame; then prompt lines
(alternatives split by `` | ``) and ``> `` response lines with ``{slot}`` fields filled from a
:class:`~personal_sim.world.World`. Prompts are lower-case; styling (capitals, fillers, typos)
comes later (:mod:`personal_sim.public_corpus`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
