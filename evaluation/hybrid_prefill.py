"""Prefill cost of hybrid recall at 8K tokens: `python -m evaluation.hybrid_prefill` (embedded default, 2 threads).

Times raw text -> first new token with hybrid recall off and on (budget 1,024 tokens, up to 8 chunks),
median of 3, to compare with the full-context prefill of `python -m evaluation.efficiency`.
"""

import json
import time
from pathlib import Path

import torch

from modeling_e2llm.embedded_default import load_embedded_default

ESSAYS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays" / "essays.jsonl"


def main(context_tokens: int = 8091, repeats: int = 3) -> None:
    torch.set_num_threads(2)
    model, processor = load_embedded_default(trained=False)
    text = "\n".join(json.loads(line)["context"] for line in open(ESSAYS))
    ids = processor.tokenizer(text[: context_tokens * 8], add_special_tokens=False)["input_ids"][:context_tokens]
    context, question = processor.tokenizer.decode(ids), "What is the special magic number?"
    model.answer(context[:2000], question, processor=processor, max_new_tokens=1)  # warm-up
    for top_k in (0, 8):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(context=context, prompt=question, processor=processor, max_new_tokens=1,
                           do_sample=False, hybrid_top_k=top_k, hybrid_token_budget=1024)
            times.append(time.perf_counter() - start)
        print(f"hybrid_top_k={top_k}, budget 1024: prefill median {sorted(times)[len(times) // 2]:.2f} s")


if __name__ == "__main__":
    main()
