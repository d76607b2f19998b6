"""What every command of the project checks in its arguments (not a model file: saved folders never hold it)."""

import argparse


def at_least(minimum: int):
    """argparse type: a whole number >= `minimum`, refused while the arguments are read (before any model
    loads) rather than recorded and misread later (0 new tokens or threads would run and say nothing)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse
