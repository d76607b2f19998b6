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


def understanding_windows(processor, context: str, window_chunks: int) -> list[str]:
    """Texts of consecutive windows of `window_chunks` chunks (an E2LLMProcessor's chunks) that together
    restate `context`: the targets of the restate task, in training and in the demo measurement.

    Windows never share a chunk, so every chunk is restated once. Without chunk overlap the windows
    concatenate back to exactly `context`; with overlap a window's text holds the text its chunks
    share once (the text runs from its first chunk's start to its last chunk's end).
    """
    if window_chunks < 1:
        raise ValueError(f"window_chunks must be at least 1, got {window_chunks}.")
    spans = processor.chunk(context)
    windows = []
    for first in range(0, len(spans), window_chunks):
        last = min(first + window_chunks, len(spans)) - 1
        windows.append(context[spans[first][0]:spans[last][1]])
    return windows


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
