"""Score one system on one uniform JSONL file:

    python -m evaluation.run --system {e2llm,truncation,full,rag} [--model PATH] --data FILE.jsonl --output DIR

Writes DIR/predictions.jsonl, DIR/summary.json and DIR/summary.md; rerunning resumes. With
--haystack-tokens N each example's context is first hidden in an N-token Paul Graham haystack
(SQuAD- or bAbI-in-a-haystack).
"""

import argparse
import sys
from pathlib import Path

from modeling_e2llm.command_line import at_least

from .data import DataFormatError, dataset_name, load_examples
from .harness import RunConflict, add_system_arguments, evaluate_examples, summary_table, system_from_arguments
from .niah import DEFAULT_HAYSTACK, hide_example_in_haystack, load_haystack_essays


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evaluation.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_arguments(parser)
    parser.add_argument("--data", required=True, type=Path, help="uniform JSONL file")
    parser.add_argument("--limit", type=at_least(1), default=None, help="only the first N examples")
    parser.add_argument("--haystack-tokens", type=at_least(1), default=None,
                        help="hide each context in a haystack of this many decoder tokens")
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK, help="JSONL of haystack texts")
    args = parser.parse_args(argv)
    try:
        examples = load_examples(args.data, limit=args.limit)
        essays = load_haystack_essays(args.haystack) if args.haystack_tokens else None
    except (DataFormatError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error} (--data and --haystack take uniform JSONL files)\n")
    system, settings = system_from_arguments(args, parser)
    # The data path as given: an absolute one would tie committed results to one machine.
    settings.update(dataset=dataset_name(args.data), data=str(args.data))
    if args.haystack_tokens:
        examples = [hide_example_in_haystack(example, essays, system.tokenizer, args.haystack_tokens) for example in examples]
        settings["dataset"] += f"@{args.haystack_tokens}tok"
        settings["haystack_tokens"] = args.haystack_tokens
    try:
        summary = evaluate_examples(system, examples, args.output, settings)
    except RunConflict as error:
        parser.exit(2, f"error: {error}\n")
    sys.stdout.write(summary_table(summary))
    return summary


if __name__ == "__main__":
    main()
