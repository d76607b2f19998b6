"""Long-context records for training: files with context/question/answer, and synthetic haystacks.

A record is a dict with `id`, `context`, `question`, `answer` (the format of the project's data
folder). A source spec (one entry of a config's `data` lists) says where records come from:

    {path: file.jsonl | saved datasets folder, where: {field: [values]}, holdout: {...}, limit: N}
    {builder: babi_haystack | squad_haystack | magic_number_haystack | pool_needle_haystack, ...options,
     haystack: <source spec>}

`holdout: {by: [fields], percent: P, side: train|dev}` splits records by a stable hash of the named
fields (dotted names read `meta`), so the same spec gives the same development split everywhere.
"""

import inspect
import json
import random
from pathlib import Path

import datasets

from modeling_e2llm.haystacks import NEEDLE_KEYS, background_text, context_lines, distinct_contexts, \
    hide_in_haystack, magic_number_record, magic_numbers, pool_needle_record, pool_needles, select_records

REQUIRED_FIELDS = ("context", "question", "answer")
SELECT_KEYS = ("path", "where", "holdout", "limit")  # what a file source (or a builder's **select) takes


def load_records(spec: dict | datasets.Dataset, seed: int = 0) -> list[dict]:
    """Records of one source spec (or of a `datasets.Dataset` with the required columns)."""
    if isinstance(spec, datasets.Dataset):
        return _check_records(list(spec), "the given dataset")
    spec = dict(spec)
    builder = spec.pop("builder", None)
    if builder is not None:
        if builder not in BUILDERS:
            raise ValueError(f"Unknown builder {builder!r}; use one of {sorted(BUILDERS)}.")
        return BUILDERS[builder](seed=seed, **spec)
    return select_records(_read(spec.pop("path", None)), seed=seed, **spec)


def _read(path: str | None) -> list[dict]:
    if path is None:
        raise ValueError("A data source needs `path:` (a JSONL file or a saved datasets folder) or `builder:`.")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"Data source {path!r} does not exist (relative paths start where you run from).")
    if file.is_dir():
        return _check_records(list(datasets.load_from_disk(str(file))), path)
    with open(file, "rb") as f:  # bytes, so that a bad line is reported with its number
        return _check_records([_json_record(line, f"{path}, line {number}")
                               for number, line in enumerate(f, start=1) if line.strip()], path)


def _json_record(line: bytes, where: str) -> dict:
    try:
        return json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} is not a UTF-8 JSON line ({error}): fix or remove it, or convert the file "
                         "to UTF-8.") from None


def _check_records(records: list[dict], origin: str) -> list[dict]:
    if not records:
        raise ValueError(f"{origin} holds no records.")
    missing = [field for field in REQUIRED_FIELDS if field not in records[0]]
    if missing:
        raise ValueError(f"{origin} lacks the field(s) {missing}; every record needs {list(REQUIRED_FIELDS)}.")
    for i, record in enumerate(records):
        record.setdefault("id", f"{origin}#{i}")
    return records


def source_documents(spec: dict, seed: int = 0) -> list[str]:
    """The distinct contexts of a source spec, in order (a file repeats a context on each of its questions)."""
    return [record["context"] for record in distinct_contexts(load_records(spec, seed))]


# --- synthetic long contexts -----------------------------------------------------------------------
def haystack_text(haystack: dict, seed: int) -> str:
    """The distinct contexts of a source spec, joined: the background text facts are hidden in."""
    return background_text(source_documents(haystack, seed))


def babi_haystack(path: str, haystack: dict, haystack_chars: list[int], seed: int = 0, **select) -> list[dict]:
    """BABILong-style records: each bAbI story's facts scattered in order through background text."""
    rng = random.Random(seed)
    background = haystack_text(haystack, seed)
    records = []
    for record in load_records({"path": path, **select}, seed):
        context = hide_in_haystack(context_lines(record["context"]), background, rng.randint(*haystack_chars), rng)
        records.append({**record, "id": f"{record['id']}_haystack", "context": context})
    return records


def squad_haystack(path: str, distractors: list[int], seed: int = 0, limit: int | None = None,
                   **select) -> list[dict]:
    """SQuAD records with their paragraph hidden among `distractors` (min, max) other paragraphs
    (drawn from all the selected records' paragraphs, before `limit`)."""
    rng = random.Random(seed)
    records = load_records({"path": path, **select}, seed)
    paragraphs = [r["context"] for r in distinct_contexts(records)]
    out = []
    for record in records[:limit]:
        others = [p for p in rng.sample(paragraphs, min(len(paragraphs), distractors[1] + 1)) if p != record["context"]]
        chosen = others[:rng.randint(*distractors)]
        chosen.insert(rng.randint(0, len(chosen)), record["context"])
        out.append({**record, "id": f"{record['id']}_haystack", "context": "\n\n".join(chosen)})
    return out


def magic_number_haystack(haystack: dict, haystack_chars: list[int], count: int, seed: int = 0, digits: int = 7,
                          needles: tuple[int, int] = (1, 1)) -> list[dict]:
    """RULER-style needles: `count` records of "special magic number" sentences hidden in background text.

    A record holds between `needles` (min, max) needles. One needle asks for its number; several share
    one key, and the question asks for all of them, answered in text order ("1234567, 7654321").
    """
    rng = random.Random(seed)
    background = haystack_text(haystack, seed)
    records = []
    for i in range(count):
        key = rng.choice(NEEDLE_KEYS)
        # A fixed count draws nothing here, so configs written before `needles` existed give the same records.
        numbers = magic_numbers(rng, needles[0] if needles[0] == needles[1] else rng.randint(*needles), digits)
        record = magic_number_record(key, numbers, background, rng.randint(*haystack_chars), rng)
        records.append({"id": f"needle_{seed}_{i}", **record})
    return records


def pool_needle_haystack(haystack: dict, haystack_chars: list[int], count: int, seed: int = 0,
                         needles: tuple[int, int] = (1, 1)) -> list[dict]:
    """Varied needles: `count` records of needles drawn from the training pool (numbers, names, dates, places,
    codes in several phrasings, asked for in other words), never from the evaluation pool NIAH measures with.
    A record holds between `needles` (min, max) needles of different families, all asked for at once."""
    rng = random.Random(seed)
    background = haystack_text(haystack, seed)
    records = []
    for i in range(count):
        drawn = pool_needles("training", rng, rng.randint(*needles))
        records.append({"id": f"pool_needle_{seed}_{i}",
                        **pool_needle_record(drawn, background, rng.randint(*haystack_chars), rng)})
    return records


BUILDERS = {"babi_haystack": babi_haystack, "squad_haystack": squad_haystack,
            "magic_number_haystack": magic_number_haystack, "pool_needle_haystack": pool_needle_haystack}


def source_keys(spec: dict, where: str) -> set[str]:
    """The keys a source spec may hold: a file source's, or its builder's options (checked while the config
    is read: a typo such as `limt` would otherwise fail deep inside data loading, after the models load)."""
    if "builder" not in spec:
        return set(SELECT_KEYS)
    if spec["builder"] not in BUILDERS:
        raise ValueError(f"Unknown builder {spec['builder']!r} in {where}; use one of {sorted(BUILDERS)}.")
    parameters = inspect.signature(BUILDERS[spec["builder"]]).parameters.values()
    takes_select = any(p.kind is p.VAR_KEYWORD for p in parameters)
    allowed = {p.name for p in parameters if p.kind is not p.VAR_KEYWORD} - {"seed"} | {"builder"}
    return allowed | (set(SELECT_KEYS) if takes_select else set())
