"""Needle in a haystack: Paul Graham essays as the haystack, needles at sentence boundaries, a grid of
context lengths (decoder tokens) x depths, scored by whether the answer holds each needle's key fact.

Variants: `sentence` (the classic San Francisco needle), `number` (a random 7-digit number), `multi`
(three numbers, all asked; the first at the depth, the others spread evenly after it, as in the
multi-needle NIAH); `pool`: the grid once per needle family (number, name, date, place, code), each cell a
template of the evaluation pool whose question paraphrases its sentence, results per family; `pool-multi`:
three needles of different families, asked at once, spread like `multi`. The needles and their insertion
live in `modeling_e2llm.haystacks` (training draws from a disjoint pool).
`hide_example_in_haystack` hides any example's context the same way (SQuAD- or bAbI-in-a-haystack).
Command line:

    python -m evaluation.niah --system e2llm --lengths 4000 8000 --depths 0 50 100 --variant sentence --output DIR
"""

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from modeling_e2llm.command_line import at_least
from modeling_e2llm.haystacks import (CLASSIC_KEY_FACT, CLASSIC_NEEDLE, NEEDLE_FAMILIES, NUMBER_NEEDLE,
                                      THREE_NUMBERS_NEEDLE, context_lines, insert_at_depths, magic_numbers,
                                      pool_needles, pool_question)

from .data import DataFormatError, Example, load_examples
from .harness import (PREDICTIONS_FILE, RunConflict, add_system_arguments, evaluate_examples, read_predictions,
                      system_from_arguments)

DEFAULT_HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays" / "essays.jsonl"
VARIANTS = ("sentence", "number", "multi", "pool", "pool-multi")
MULTI_COUNT = 3  # the needles THREE_NUMBERS_NEEDLE and pool-multi ask for
RESULTS_FILE, HEATMAP_FILE = "results.json", "heatmap.png"
RED_TO_GREEN = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])  # the familiar plot's


def load_haystack_essays(path: str | Path = DEFAULT_HAYSTACK) -> list[str]:
    """The essays' texts, in file order, from a uniform JSONL file (default: the Paul Graham essays)."""
    return [example.context for example in load_examples(path)]


def haystack_prefix(essays: list[str], tokenizer, num_tokens: int) -> str:
    """The first `num_tokens` decoder tokens of the essays joined by blank lines, repeated as needed."""
    if num_tokens < 1:
        raise ValueError(f"A haystack needs at least 1 token, got {num_tokens}.")
    essays_text = "\n\n".join(essays)
    size = 6 * num_tokens  # characters; English text has about 4 per token, so one pass is the rule
    while True:
        copies = -(-size // len(essays_text))  # long haystacks repeat the essays, as the original NIAH does
        text = "\n\n".join([essays_text] * copies)[:size]
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]
        if len(offsets) > num_tokens:  # the last token may be cut by [:size]; the one we stop at is whole
            return text[:offsets[num_tokens - 1][1]]
        size *= 2


def needles_and_question(variant: str, rng: random.Random,
                         family: str | None = None) -> tuple[list[str], str, list[str]]:
    """A cell's needle sentences, the question and the key facts (`family`: the pool variant's)."""
    if variant == "sentence":
        return [CLASSIC_NEEDLE.sentence], CLASSIC_NEEDLE.question, [CLASSIC_KEY_FACT]
    count = 1 if variant in ("number", "pool") else MULTI_COUNT
    if variant.startswith("pool"):
        needles = pool_needles("evaluation", rng, count, family)
        return ([template.sentence.format(item=item) for template, item in needles], pool_question(needles),
                [item for _, item in needles])
    facts = magic_numbers(rng, count)
    needle = NUMBER_NEEDLE if variant == "number" else THREE_NUMBERS_NEEDLE
    return [needle.sentence.format(number=fact) for fact in facts], needle.question, facts


def needle_example(variant: str, length: int, depth: float, essays: list[str], tokenizer,
                   seed: int = 0, family: str | None = None) -> Example:
    """One grid cell: a haystack of about `length` decoder tokens (needles included), needles at `depth`
    (`family`: the needle family of the pool variant)."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown NIAH variant {variant!r}; choose one of {VARIANTS}.")
    if (variant == "pool") != (family is not None):
        raise ValueError(f"The pool variant needs a needle family (one of {NEEDLE_FAMILIES}), the others none.")
    # The number variants' cells draw as they always did: the family only joins the pool variant's seed.
    rng = random.Random(f"{variant}-{length}-{depth}-{seed}" + (f"-{family}" if family else ""))
    needles, question, facts = needles_and_question(variant, rng, family)
    count = len(needles)
    depths = [depth + i * (100 - depth) / count for i in range(count)]
    needle_tokens = sum(len(tokenizer(" " + needle, add_special_tokens=False)["input_ids"]) for needle in needles)
    haystack = haystack_prefix(essays, tokenizer, max(1, length - needle_tokens))
    context, starts = insert_at_depths(haystack, needles, depths)
    name = f"{variant}-{family}" if family else variant
    return Example(id=f"niah-{name}-{length}-{depth:g}", context=context, question=question,
                   answer=needles[0], answers=needles, task="niah",
                   meta={"length": length, "depth": depth, "variant": variant, "family": family,
                         "key_facts": facts, "needle_depths": depths, "needle_starts": starts})


def needle_grid(variant: str, lengths: list[int], depths: list[float], essays: list[str], tokenizer,
                seed: int = 0) -> list[Example]:
    """One example per (length, depth), lengths outermost; for the pool variant, per family (outermost)."""
    families = NEEDLE_FAMILIES if variant == "pool" else [None]
    return [needle_example(variant, length, depth, essays, tokenizer, seed, family)
            for family in families for length in lengths for depth in depths]


def hide_example_in_haystack(example: Example, essays: list[str], tokenizer, num_tokens: int) -> Example:
    """`example` with its context's lines scattered, in order, at random sentence boundaries of a haystack,
    about `num_tokens` decoder tokens in all (SQuAD: the paragraph; bAbI: each fact). Seeded by the id."""
    lines = context_lines(example.context)
    context_tokens = sum(len(tokenizer(" " + line, add_special_tokens=False)["input_ids"]) for line in lines)
    if context_tokens >= num_tokens:
        raise ValueError(f"Example {example.id!r} already has {context_tokens} tokens, more than the "
                         f"{num_tokens}-token haystack asked for: pass a larger --haystack-tokens.")
    rng = random.Random(example.id)
    depths = sorted(rng.uniform(0, 100) for _ in lines)
    context, _ = insert_at_depths(haystack_prefix(essays, tokenizer, num_tokens - context_tokens), lines, depths)
    return replace(example, context=context, meta={**example.meta, "haystack_tokens": num_tokens,
                                                   "needle_depths": depths})


def grid_results(examples: list[Example], records: dict[str, dict], settings: dict) -> dict:
    """results.json: settings, the grid and per cell the needle recall (None where the system skipped it), the
    mean over cells and, for the pool variant, per needle family."""
    cells = []
    for example in examples:
        record = records[example.id]
        cells.append({"length": example.meta["length"], "depth": example.meta["depth"],
                      "family": example.meta.get("family"),
                      "score": record["scores"]["needle_recall"] if "scores" in record else None,
                      "prediction": record.get("prediction"), "skipped": record.get("skipped")})
    families = sorted({cell["family"] for cell in cells if cell["family"]})
    return {**settings, "lengths": sorted({cell["length"] for cell in cells}),
            "depths": sorted({cell["depth"] for cell in cells}), "cells": cells, "mean_score": mean_score(cells),
            "per_family": {family: mean_score([c for c in cells if c["family"] == family]) for family in families}}


def mean_score(cells: list[dict]) -> float | None:
    """Mean needle recall of the cells the system answered (None if it answered none)."""
    scores = [cell["score"] for cell in cells if cell["score"] is not None]
    return sum(scores) / len(scores) if scores else None


def draw_heatmap(ax, results: dict):
    """Depth (y, 0% on top) x context length (x), red (0) to green (1), the mean over the needle families of
    the pool variant; grey "n/a" where skipped."""
    lengths, depths = results["lengths"], results["depths"]
    matrix = [[float("nan")] * len(lengths) for _ in depths]
    for row, depth in enumerate(depths):
        for column, length in enumerate(lengths):
            score = mean_score([c for c in results["cells"] if c["depth"] == depth and c["length"] == length])
            matrix[row][column] = float("nan") if score is None else score
    colormap = RED_TO_GREEN.with_extremes(bad="#d9d9d9")
    image = ax.imshow(matrix, cmap=colormap, vmin=0, vmax=1, aspect="auto")
    for row, depth_scores in enumerate(matrix):
        for column, score in enumerate(depth_scores):
            ax.text(column, row, "n/a" if score != score else f"{score:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [f"{length / 1000:g}K" for length in lengths])
    ax.set_yticks(range(len(depths)), [f"{depth:g}%" for depth in depths])
    ax.set_xlabel("context length (decoder tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{results['system']}, {results['variant']} needle\n{results['model']}", fontsize=9)
    return image


def save_heatmap(results: dict, path: str | Path) -> None:
    figure = Figure(figsize=(1.2 * len(results["lengths"]) + 3, 0.5 * len(results["depths"]) + 2.5),
                    layout="constrained")
    ax = figure.add_subplot()
    figure.colorbar(draw_heatmap(ax, results), ax=ax, label="needle recall")
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evaluation.niah", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_arguments(parser)
    parser.add_argument("--lengths", type=at_least(1), nargs="+", default=[4000, 8000, 16000, 32000],
                        help="context lengths in decoder tokens")
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100],
                        help="needle depths in percent of the context")
    parser.add_argument("--variant", choices=VARIANTS, default="sentence")
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK, help="JSONL of haystack texts")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random numbers of the number variants")
    args = parser.parse_args(argv)
    try:
        essays = load_haystack_essays(args.haystack)
    except (DataFormatError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error} (--haystack takes a uniform JSONL file)\n")
    system, settings = system_from_arguments(args, parser)
    settings.update(dataset=f"niah-{args.variant}", variant=args.variant, seed=args.seed)
    examples = needle_grid(args.variant, args.lengths, args.depths, essays, system.tokenizer, args.seed)
    try:
        evaluate_examples(system, examples, args.output, settings)
    except RunConflict as error:
        parser.exit(2, f"error: {error}\n")
    results = grid_results(examples, read_predictions(args.output / PREDICTIONS_FILE), settings)
    (args.output / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    save_heatmap(results, args.output / HEATMAP_FILE)
    print(f"mean needle recall {results['mean_score']} {results['per_family'] or ''} -> {args.output / HEATMAP_FILE}")
    return results


if __name__ == "__main__":
    main()
