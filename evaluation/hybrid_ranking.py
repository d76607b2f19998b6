"""Does hybrid recall's ranking find the needles? For every NIAH cell, the rank of each needle's chunk among
all chunks by `E2LLMForCausalLM.chunk_scores`, for each model given, each encoder asked for (`--scoring`: the
chunk encoder as training tuned it, or the frozen pretrained copy; default: the model's own `hybrid_scoring`)
and each ranking method (`--ranking`: dense cosine alone, or fused with BM25; default: the model's own
`hybrid_ranking`). Reported: recall@1/3/5/8, the share of cells whose needles' chunks are all within the top
k, overall and per needle family (the pool variants). Compare the methods on the evaluation pool:

    python -m evaluation.hybrid_ranking --model embedded --ranking dense --ranking fused --variant pool \\
        --lengths 4000 8000 16000 32000 64000 --depths 0 25 50 75 100 --output runs/ranking.json

`--fast-encoder` ranks every cell again with the int8 CPU encoder (`quantize_encoder`) and reports its accuracy
cost: the cosine of its ranking vectors to fp32 (every real window of every chunk of the grid, what the ranking
compares; mean and min) and the share of cells whose needles are in the top 5 with both or with neither.

No generation: the encoder alone, a few seconds per cell on a CPU.
"""

import argparse
import copy
import json
from pathlib import Path

import torch

from modeling_e2llm.command_line import at_least
from modeling_e2llm.loading import load_model

from .niah import DEFAULT_HAYSTACK, VARIANTS, load_haystack_essays, needle_grid

TOP_KS = (1, 3, 5, 8)


@torch.no_grad()
def needle_ranks(model, processor, example, scoring: str | None = None, ranking: str | None = None) -> list[int]:
    """0-based rank of each needle's chunk (the chunk holding the needle's first character) in hybrid recall's
    ranking with the `scoring` encoder and the `ranking` method (default: the model's own)."""
    chunks = processor.encode_chunks([example.context])
    spans = chunks["offsets"].tolist()
    scores = model.chunk_scores(chunks, example.question, processor, scoring=scoring, ranking=ranking)  # (n_chunks,)
    order = torch.argsort(scores, descending=True).tolist()
    ranks = []
    for start in example.meta["needle_starts"]:
        chunk = next(i for i, (begin, end) in enumerate(spans) if begin <= start < end)
        ranks.append(order.index(chunk))
    return ranks


@torch.no_grad()
def ranking_cosines(model, fast_model, processor, example) -> torch.Tensor:
    """(n_vectors,) cosine of each ranking vector `fast_model` makes of the example's chunks to the one `model`
    makes: every real window of every chunk (one vector per chunk without ranking windows)."""
    chunks = processor.encode_chunks([example.context])
    ids, mask = chunks["chunk_input_ids"].to(model.device), chunks["chunk_attention_mask"].to(model.device)
    (_, exact, windows), (_, fast, _) = (m.model.pool_chunks_and_ranking(
        ids, mask, chunk_tokens=False, scoring=m.model.checked_scoring()) for m in (model, fast_model))
    cosines = torch.nn.functional.cosine_similarity(exact.float(), fast.float(), dim=-1)  # (n_chunks[, W])
    return cosines if windows is None else cosines[windows]


def fast_encoder_agreement(model, fast_model, processor, examples, ranks, fast_ranks) -> dict:
    """The int8 encoder's accuracy cost on the grid: ranking-vector cosines to fp32 and top-5 agreement."""
    cosines = torch.cat([ranking_cosines(model, fast_model, processor, example) for example in examples])
    same_top_5 = sum((max(r) < 5) == (max(f) < 5) for r, f in zip(ranks, fast_ranks)) / len(ranks)
    return {"ranking_cosine_mean": cosines.mean().item(), "ranking_cosine_min": cosines.min().item(),
            "cells_with_the_same_needles_in_top_5": same_top_5}


def rank_summary(ranks: list[list[int]], top_ks: tuple[int, ...] = TOP_KS) -> dict:
    """Share of cells whose needles are all within the top k, for each k."""
    return {f"all_needles_in_top_{k}": sum(max(r) < k for r in ranks) / len(ranks) for k in top_ks}


def family_summaries(examples: list, ranks: list[list[int]]) -> dict:
    """`rank_summary` of the cells of each needle family (the pool variant's; one "all" entry otherwise)."""
    families = sorted({example.meta.get("family") or "all" for example in examples})
    return {family: rank_summary([r for e, r in zip(examples, ranks) if (e.meta.get("family") or "all") == family])
            for family in families}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evaluation.hybrid_ranking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="E2LLM checkpoint folder or Hub id, or 'embedded' for the embedded default; repeatable")
    parser.add_argument("--scoring", action="append", choices=("tuned", "base"),
                        help="encoder that ranks (config.hybrid_scoring); repeatable; default: the model's own")
    parser.add_argument("--ranking", action="append", choices=("dense", "fused"),
                        help="ranking method (config.hybrid_ranking); repeatable; default: the model's own")
    parser.add_argument("--variant", choices=VARIANTS[1:], default="number")
    parser.add_argument("--lengths", type=at_least(1), nargs="+", default=[4000, 8000, 16000, 32000])
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100])
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK)
    parser.add_argument("--fast-encoder", action="store_true",
                        help="also rank with the int8 CPU encoder and report its agreement with fp32")
    parser.add_argument("--threads", type=at_least(1), default=None)
    parser.add_argument("--output", type=Path, required=True, help="JSON file of the ranks and summary")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    essays = load_haystack_essays(args.haystack)
    results = {}
    for name in args.model:
        model, processor, label = load_model(None if name == "embedded" else name)
        examples = needle_grid(args.variant, args.lengths, args.depths, essays, processor.tokenizer)
        fast_model = copy.deepcopy(model).quantize_encoder() if args.fast_encoder else None
        for scoring in args.scoring or [model.config.hybrid_scoring]:
            for ranking in args.ranking or [model.config.hybrid_ranking]:
                ranks = [needle_ranks(model, processor, example, scoring, ranking) for example in examples]
                key = f"{name} ({scoring}, {ranking})"
                results[key] = _result(label, scoring, ranking, examples, ranks)
                if fast_model is not None:
                    fast_ranks = [needle_ranks(fast_model, processor, example, scoring, ranking) for example in examples]
                    results[f"{key} int8"] = {**_result(f"{label}, int8 encoder", scoring, ranking, examples, fast_ranks),
                                              **fast_encoder_agreement(model, fast_model, processor, examples, ranks,
                                                                       fast_ranks)}
                for shown in (key, f"{key} int8") if fast_model is not None else (key,):
                    print(shown, json.dumps({k: v for k, v in results[shown].items() if k != "cells"}), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"variant": args.variant, "models": results}, indent=1) + "\n")
    return results


def _result(label: str, scoring: str, ranking: str, examples: list, ranks: list[list[int]]) -> dict:
    return {"label": label, "scoring": scoring, "ranking": ranking, **rank_summary(ranks),
            "per_family": family_summaries(examples, ranks),
            "cells": [{"id": e.id, "needle_ranks": r} for e, r in zip(examples, ranks)]}


if __name__ == "__main__":
    main()
