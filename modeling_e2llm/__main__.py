"""Ask a question about a long text file: `python -m modeling_e2llm --file doc.txt --question "..."`."""

import argparse
import sys
import time

import torch

from .command_line import at_least
from .loading import load_model


def read_text_file(path: str, parser: argparse.ArgumentParser) -> str:
    """The file's text; a missing or non-UTF-8 file ends the command with what to do instead."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as error:
        parser.error(f"--file {path}: {error.strerror}.")
    except UnicodeDecodeError as error:
        parser.error(f"--file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                     f"{error.start:,}): convert it first, e.g. iconv -f latin1 -t utf-8 {path} > out.txt.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", required=True, help="UTF-8 text file to read")
    parser.add_argument("--question", required=True)
    parser.add_argument("--model", default=None,
                        help="saved E2LLM folder or Hub id (default: the embedded default models with the "
                             "trained demo weights when present)")
    parser.add_argument("--untrained", action="store_true", help="embedded default without the demo weights")
    parser.add_argument("--max-new-tokens", type=at_least(1), default=64)
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = read_text_file(args.file, parser)
    try:  # a bad folder or text gets its one-line reason, not a traceback
        model, processor, description = load_model(args.model, trained=not args.untrained)
        if "UNTRAINED" in description:
            print(f"Note: {description}: the answer shows that the pipeline runs, not what a trained E2LLM can do.",
                  file=sys.stderr)
        start = time.perf_counter()
        answer = model.answer(text, args.question, processor=processor, max_new_tokens=args.max_new_tokens,
                              do_sample=False, progress=True)
    except (OSError, ValueError, TypeError) as error:
        parser.exit(2, f"error: {error}\n")
    print(answer)
    print(f"[{len(text):,} characters, {len(processor.chunk(text)):,} chunks, "
          f"{time.perf_counter() - start:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()
