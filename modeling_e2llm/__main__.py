"""Ask a question about a long text file: `python -m modeling_e2llm --file doc.txt --question "..."`."""

import argparse
import sys
import time

import torch

from . import E2LLMForCausalLM
from .embedded_default import load_embedded_default


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", required=True, help="UTF-8 text file to read")
    parser.add_argument("--question", required=True)
    parser.add_argument("--model", default=None,
                        help="saved E2LLM folder or Hub id (default: the embedded default models with the "
                             "trained demo weights when present)")
    parser.add_argument("--untrained", action="store_true", help="embedded default without the demo weights")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.file, encoding="utf-8") as f:
        text = f.read()

    if args.model is None:
        model, processor = load_embedded_default(trained=not args.untrained)
        if not model.is_trained_demo:
            print("Note: embedded default models with an UNTRAINED adapter: the answer shows that the pipeline "
                  "runs, not what a trained E2LLM can do.", file=sys.stderr)
    else:
        model = E2LLMForCausalLM.from_pretrained(args.model, trust_remote_code=True)
        processor = model.get_processor()
    model.eval()
    start = time.perf_counter()
    answer = model.answer(text, args.question, processor=processor, max_new_tokens=args.max_new_tokens,
                          do_sample=False, progress=True)
    print(answer)
    print(f"[{len(text):,} characters, {len(processor.chunk(text)):,} chunks, "
          f"{time.perf_counter() - start:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()
