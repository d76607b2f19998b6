"""Synthetic long contexts, shared by training (its haystack builders) and evaluation (NIAH, `evaluation.run
--haystack-tokens`, the demo measurements), which never import each other.

What lives here: the held-out split both sides agree on, the background text facts are hidden in, where
sentences start in it, how sentences are put there (at given depths or at random starts), and the needle
sentences with their questions. A record is a dict with `id`, `context`, `question`, `answer` (and
optionally `meta`), the format of the project's data folder.

Not a model file: the files that ship in a saved model folder never import this module.
"""

import hashlib
import random
import re
from typing import Callable, NamedTuple

# --- records: selection and the held-out split ---------------------------------------------------------


def record_field(record: dict, name: str):
    """`name` or, dotted, a nested field such as `meta.babi_task` of a record."""
    value = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"Record {record.get('id')!r} has no field {name!r}.")
        value = value[part]
    return value


def holdout_side(record: dict, by: list[str], percent: float, side: str = "train") -> bool:
    """True if `record` belongs to `side` ("train" or "dev") of a stable hash split on the fields `by`,
    `percent` of the records on the dev side: the same fields give the same split in training and evaluation."""
    if side not in ("train", "dev"):
        raise ValueError(f"holdout side must be 'train' or 'dev', got {side!r}.")
    key = "\x1f".join(str(record_field(record, name)) for name in by)
    bucket = int(hashlib.md5(key.encode()).hexdigest(), 16) % 10_000
    return (bucket < percent * 100) == (side == "dev")


def select_records(records: list[dict], seed: int, where: dict | None = None, holdout: dict | None = None,
                   limit: int | None = None) -> list[dict]:
    """Filter by `where` (field -> allowed value or values), keep one `holdout` side (`holdout_side`'s
    arguments), shuffle with `seed`, keep the first `limit`."""
    for field, allowed in (where or {}).items():
        allowed = set(allowed if isinstance(allowed, list) else [allowed])
        records = [r for r in records if record_field(r, field) in allowed]
    if holdout is not None:
        records = [r for r in records if holdout_side(r, **holdout)]
    records = list(records)
    random.Random(seed).shuffle(records)
    return records[:limit] if limit is not None else records


def distinct_contexts(records: list[dict]) -> list[dict]:
    """One record per distinct context, in order (files repeat a context on each of its questions)."""
    seen, out = set(), []
    for record in records:
        if record["context"] not in seen:
            seen.add(record["context"])
            out.append(record)
    return out


def context_lines(context: str) -> list[str]:
    """The non-blank lines of a context: a bAbI story's facts, a paragraph as one line."""
    return [line for line in context.split("\n") if line.strip()]


def understanding_windows(processor, context: str, window_chunks: int, count: int | None = None,
                          rng: random.Random | None = None, skip_first: bool = False) -> list[str]:
    """Texts of windows of `window_chunks` consecutive chunks (an E2LLMProcessor's chunks) of `context`: the
    targets of the restate task, in training and in the demo measurement.

    Windows never share a chunk. With `count` None they restate the whole context once: without chunk overlap
    they concatenate back to exactly `context`; with overlap a window's text holds the text its chunks share
    once (it runs from its first chunk's start to its last chunk's end). With `count`, `count` windows at
    `rng`'s places (see `chunk_runs`, which also says what `skip_first` leaves out).
    """
    runs = chunk_runs(processor, context, window_chunks, count, rng, skip_first)
    return [context[run[0][0]:run[-1][1]] for run in runs]


def chunk_runs(processor, context: str, run_chunks: int, count: int | None = None, rng: random.Random | None = None,
               skip_first: bool = False) -> list[list[tuple[int, int]]]:
    """Runs of `run_chunks` consecutive chunks of `context`, as character spans `(start, end)` in it, in text
    order; runs never share a chunk.

    count None: every run of the context (the last may be shorter). count N: at most N runs of `run_chunks`
    chunks at places drawn by `rng` (default: seed 0), one in each of N equal stretches of the context. A long
    context (a book: 400,000 characters, 800 chunks at 512) is then never chunked whole for the few runs kept:
    each run is chunked from a slice of `run_chunks + 2` chunk sizes starting at a drawn point, and the slice's
    first chunk, cut mid-sentence by that point, is dropped (chunks never exceed `chunk_size` characters, so the
    run's chunks end where they would in the whole text from that start). `skip_first` leaves
    the context's first chunk out (the PG essays all open with the same banner).
    """
    if run_chunks < 1:
        raise ValueError(f"A run needs at least one chunk (window_chunks >= 1), got {run_chunks}.")
    rng = rng or random.Random(0)
    slice_chars = (run_chunks + 2) * processor.chunk_size
    first_start = processor.chunk_size if skip_first else 0  # past the first chunk's end, wherever it is
    if count is not None and (len(context) - first_start) // count >= 2 * slice_chars:
        stretch = (len(context) - first_start) // count
        runs = []
        for i in range(count):
            start = first_start + i * stretch + rng.randrange(stretch - slice_chars)
            spans = processor.chunk(context[start:start + slice_chars])[1:run_chunks + 1]
            runs.append([(start + s, start + e) for s, e in spans])
        return runs
    spans = processor.chunk(context)[int(skip_first):]
    runs = [spans[first:first + run_chunks] for first in range(0, len(spans), run_chunks)]
    if count is None or count >= len(runs):
        return runs
    whole = [run for run in runs if len(run) == run_chunks]
    return [whole[i] for i in sorted(rng.sample(range(len(whole)), min(count, len(whole))))]


# --- sentence boundaries -------------------------------------------------------------------------------
# A sentence or line starts where a match ends: sentence punctuation (maybe closing quotes or brackets)
# then white space, or a line break and the white space after it. (The processor's chunker cuts by its own
# rule, on purpose: right after the punctuation, before the white space, so that chunks concatenate back
# to the text, and after CJK marks too; the shipped files also may not import this module.)
SENTENCE_START = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+|\n\s*")
# The older rule training's haystack builders draw with: no closing quotes, and an indented line starts at
# its indent. Every record of the repository's training configs was drawn with it, so switching them to
# SENTENCE_START would change those records (the two differ at about 1 boundary in 100 of the essays).
TRAINING_SENTENCE_START = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a sentence may go: 0, every sentence or line start, and len(text)."""
    return sorted({0, len(text), *(match.end() for match in SENTENCE_START.finditer(text))})


# --- putting sentences into text -----------------------------------------------------------------------
Spacing = Callable[[str, str], tuple[str, str]]  # (character before, character after) -> (text before, after)


def space_where_touching(before: str, after: str) -> tuple[str, str]:
    """A space between the sentence and a neighbouring character that is not white space (NIAH's rule)."""
    return " " if before and not before.isspace() else "", " " if after and not after.isspace() else ""


def space_after(before: str, after: str) -> tuple[str, str]:
    """Always one space after the sentence (training's builders, whose sentences land after white space)."""
    return "", " "


def insert_sentences(text: str, sentences: list[str], places: list[int],
                     spacing: Spacing = space_where_touching) -> tuple[str, list[int]]:
    """`text` with sentences[i] put at character offset places[i], padded by `spacing`; and where each
    sentence starts in the new text. Sentences at the same offset keep their order; for the second one,
    the character before is the end of the first."""
    order = sorted(range(len(sentences)), key=lambda i: places[i])
    pieces, starts, last, length = [], [0] * len(sentences), 0, 0
    for index in order:
        place = places[index]
        pieces.append(text[last:place])
        length += len(pieces[-1])
        text_before = pieces[-1] or (pieces[-2] if len(pieces) > 1 else "")
        before, after = spacing(text_before[-1:], text[place:place + 1])
        pieces.append(before + sentences[index] + after)
        starts[index] = length + len(before)
        length += len(pieces[-1])
        last = place
    pieces.append(text[last:])
    return "".join(pieces), starts


def insert_at_depths(haystack: str, sentences: list[str], depths: list[float]) -> tuple[str, list[int]]:
    """Put sentence i at the sentence start nearest to depths[i] percent of `haystack` (a space separates
    it from touching text); returns the new text and where each sentence starts in it."""
    if len(sentences) != len(depths):
        raise ValueError(f"{len(sentences)} needles but {len(depths)} depths: give one depth per needle.")
    if any(not 0 <= depth <= 100 for depth in depths):
        raise ValueError(f"Depths are percentages in [0, 100], got {depths}.")
    boundaries = sentence_starts(haystack)
    places = [min(boundaries, key=lambda b: abs(b - len(haystack) * depth / 100)) for depth in depths]
    return insert_sentences(haystack, sentences, places)


def background_text(contexts: list[str]) -> str:
    """The background facts are hidden in: the contexts, stripped, joined by blank lines."""
    return "\n\n".join(context.strip() for context in contexts)


def background_window(background: str, length: int, rng: random.Random) -> str:
    """`length` characters of `background` from a random sentence start (TRAINING_SENTENCE_START),
    wrapping around to its beginning after a blank line as often as needed."""
    start = rng.choice([0] + [m.end() for m in TRAINING_SENTENCE_START.finditer(background)])
    text = (background[start:] + "\n\n" + background) * (1 + length // max(1, len(background)))
    return text[:length]


def insert_at_random_starts(text: str, sentences: list[str], rng: random.Random) -> str:
    """`text` with `sentences` put in their order at random sentence starts (TRAINING_SENTENCE_START; the
    end of `text` when it has none), several maybe at the same one, each followed by a space."""
    cuts = [m.end() for m in TRAINING_SENTENCE_START.finditer(text)] or [len(text)]
    places = sorted(rng.choice(cuts) for _ in sentences)
    return insert_sentences(text, [sentence.strip() for sentence in sentences], places, space_after)[0]


def hide_in_haystack(sentences: list[str], background: str, length: int, rng: random.Random) -> str:
    """About `length` characters of `background` (plus the sentences) with `sentences` hidden in their
    order: training's bAbI-in-a-haystack and magic-number records."""
    return insert_at_random_starts(background_window(background, length, rng), sentences, rng)


# --- needles -------------------------------------------------------------------------------------------
class Needle(NamedTuple):
    """A needle sentence and the question that asks for it (str.format fields: {number}, keyed ones {key})."""

    sentence: str
    question: str


CLASSIC_NEEDLE = Needle("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a "
                        "sunny day.", "What is the best thing to do in San Francisco?")
CLASSIC_KEY_FACT = "Dolores Park"
# RULER's "special magic number" needles: NIAH's grid hides one number, or three all asked for ...
NUMBER_NEEDLE = Needle("The special magic number is: {number}.",
                       "What is the special magic number mentioned in the text?")
THREE_NUMBERS_NEEDLE = Needle("One of the special magic numbers is: {number}.",
                              "What are the three special magic numbers mentioned in the text? List all of them.")
# ... training and the demo measurement name a key, so that a record may also hold other keys' numbers.
KEYED_NUMBER_NEEDLE = Needle("The special magic number for {key} is: {number}.",
                             "What is the special magic number for {key} mentioned in the provided text?")
KEYED_NUMBERS_NEEDLE = Needle("One of the special magic numbers for {key} is: {number}.",
                              "What are all the special magic numbers for {key} mentioned in the provided text? "
                              "List all of them.")
NEEDLE_KEYS = ("blue lagoon", "silent harbor", "amber forest", "iron valley", "crystal meadow", "golden bridge",
               "hidden canyon", "northern lights", "quiet orchard", "velvet river", "scarlet tower", "misty island")


def magic_numbers(rng: random.Random, count: int, digits: int = 7) -> list[str]:
    """`count` random numbers of `digits` digits, as text."""
    return [str(rng.randrange(10 ** (digits - 1), 10 ** digits)) for _ in range(count)]


def magic_number_record(key: str, numbers: list[str], background: str, length: int, rng: random.Random) -> dict:
    """{context, question, answer}: one keyed needle per number hidden in about `length` characters of
    `background`. One number is asked for; several are all asked for, answered in text order ("1234567, 7654321")."""
    needle = KEYED_NUMBER_NEEDLE if len(numbers) == 1 else KEYED_NUMBERS_NEEDLE
    sentences = [needle.sentence.format(key=key, number=number) for number in numbers]
    return {"context": hide_in_haystack(sentences, background, length, rng),
            "question": needle.question.format(key=key), "answer": ", ".join(numbers)}


# --- varied needles: template pools ---------------------------------------------------------------------
# One phrasing lets a model (and a ranking) learn the phrasing instead of the task: these pools hold needles
# of several families, each with a question that paraphrases rather than repeats its sentence. Per family, one
# evaluation question keeps the needle's proper name or rare noun (as a user who knows what to ask would),
# the other replaces every content word by a synonym ("luthier" for "violin maker"): what a word-matching
# ranking cannot find. Evaluation draws only from EVALUATION_NEEDLES and training only from TRAINING_NEEDLES,
# which share no template.
class NeedleTemplate(NamedTuple):
    """A needle sentence holding one `{item}` of its `family`, and a question that asks for that item."""

    family: str
    sentence: str
    question: str


FIRST_NAMES = ("Marta", "Oskar", "Ines", "Tobias", "Leila", "Anders", "Priya", "Matteo", "Yara", "Henrik",
               "Sofia", "Casimir", "Noor", "Emil", "Aurelia", "Dmitri")
LAST_NAMES = ("Kowalczyk", "Lindqvist", "Okonkwo", "Ferreira", "Halvorsen", "Castellano", "Nakamura", "Brennan",
              "Dubois", "Vasquez", "Albrecht", "Moreau", "Szabo", "Whitfield", "Rahimi", "Ostrowski")
PLACES = ("Valparaiso", "Tromso", "Samarkand", "Ouagadougou", "Reykjavik", "Cartagena", "Trieste", "Hobart",
          "Kraków", "Mombasa", "Galway", "Ushuaia", "Tbilisi", "Ljubljana", "Antigua", "Windhoek")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


def _number_item(rng: random.Random) -> str:
    return magic_numbers(rng, 1)[0]


def _name_item(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _date_item(rng: random.Random) -> str:
    # Day first, no comma: several items are answered as one comma-separated list.
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1850, 2019)}"


def _place_item(rng: random.Random) -> str:
    return rng.choice(PLACES)


def _code_item(rng: random.Random) -> str:
    letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXZ") for _ in range(2))
    return f"{letters}-{rng.randint(1000, 9999)}"


ITEM_DRAWS: dict[str, Callable[[random.Random], str]] = {
    "number": _number_item, "name": _name_item, "date": _date_item, "place": _place_item, "code": _code_item}
NEEDLE_FAMILIES = tuple(ITEM_DRAWS)

EVALUATION_NEEDLES = (
    NeedleTemplate("number", "The combination of the safe in the old harbour office is {item}.",
                   "Which digits open the strongbox at the port office?"),
    NeedleTemplate("number", "Ticket {item} won the raffle at the county fair.",
                   "What was the winning raffle ticket at the county fair?"),
    NeedleTemplate("name", "The lighthouse on Gull Rock was kept for forty years by {item}.",
                   "Who was the keeper of the Gull Rock lighthouse?"),
    NeedleTemplate("name", "{item} was the architect who drew the plans of the glass library.",
                   "Who designed the building of glass where the books are kept?"),
    NeedleTemplate("date", "The bridge over the Marrow river opened to traffic on {item}.",
                   "When did the Marrow river bridge open?"),
    NeedleTemplate("date", "The founders signed the charter of the rowing club on {item}.",
                   "On what day was the boating society founded?"),
    NeedleTemplate("place", "The chess players held their secret meeting in {item}.",
                   "In which city did the chess players meet in secret?"),
    NeedleTemplate("place", "In his last years the violin maker moved his workshop to {item}.",
                   "Where did the luthier spend his final working days?"),
    NeedleTemplate("code", "To enter the server room, type {item} on the keypad by the door.",
                   "What code unlocks the server room?"),
    NeedleTemplate("code", "The parcel was shipped with the tracking reference {item}.",
                   "What number lets one follow the package in the mail?"),
)
TRAINING_NEEDLES = (
    NeedleTemplate("number", "The locker at the swimming pool opens with the number {item}.",
                   "Which number opens the pool locker?"),
    NeedleTemplate("number", "The museum counted {item} visitors in its first year.",
                   "How many people came to the museum in its first year?"),
    NeedleTemplate("name", "The captain of the ship on its final voyage was {item}.",
                   "Who commanded the ship on its last voyage?"),
    NeedleTemplate("name", "The prize for the best apple pie went to {item}.",
                   "Who won the apple pie contest?"),
    NeedleTemplate("date", "The observatory first recorded the comet on {item}.",
                   "When was the comet seen from the observatory?"),
    NeedleTemplate("date", "The old water mill burned down on {item}.",
                   "On which date did the mill burn?"),
    NeedleTemplate("place", "The stolen painting was finally found in {item}.",
                   "Where was the missing painting recovered?"),
    NeedleTemplate("place", "The orchestra ended its winter tour in {item}.",
                   "In what city did the orchestra finish touring that winter?"),
    NeedleTemplate("code", "The backup drive is labelled with the serial {item}.",
                   "What serial is written on the backup disk?"),
    NeedleTemplate("code", "Flight {item} leaves for the island at dawn.",
                   "Which flight goes to the island early in the morning?"),
)
NEEDLE_POOLS = {"evaluation": EVALUATION_NEEDLES, "training": TRAINING_NEEDLES}
MULTI_NEEDLE_QUESTION = "Answer these three questions. {questions}"  # three needles asked at once


def pool_needles(pool: str, rng: random.Random, count: int = 1,
                 family: str | None = None) -> list[tuple[NeedleTemplate, str]]:
    """`count` (template, item) pairs of the `pool` ("evaluation" or "training"): of `family` if given, else
    of `count` different families."""
    if pool not in NEEDLE_POOLS:
        raise ValueError(f"Unknown needle pool {pool!r}; choose one of {sorted(NEEDLE_POOLS)}.")
    families = [family] * count if family is not None else rng.sample(NEEDLE_FAMILIES, count)
    templates = [rng.choice([t for t in NEEDLE_POOLS[pool] if t.family == name]) for name in families]
    return [(template, ITEM_DRAWS[template.family](rng)) for template in templates]


def pool_question(needles: list[tuple[NeedleTemplate, str]]) -> str:
    """The question asking for every needle's item: its own for one needle, all of them at once for several."""
    questions = " ".join(template.question for template, _ in needles)
    return questions if len(needles) == 1 else MULTI_NEEDLE_QUESTION.format(questions=questions)


def pool_needle_record(needles: list[tuple[NeedleTemplate, str]], background: str, length: int,
                       rng: random.Random) -> dict:
    """{context, question, answer}: the needles (`pool_needles`) hidden in about `length` characters of
    `background`, all asked for at once; the answer lists their items in the order asked."""
    sentences = [template.sentence.format(item=item) for template, item in needles]
    return {"context": hide_in_haystack(sentences, background, length, rng), "question": pool_question(needles),
            "answer": ", ".join(item for _, item in needles)}
