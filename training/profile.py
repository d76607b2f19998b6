"""Where a training step's time goes, op by op: `python -m training.profile --config <yaml> [--steps 2] [--rows 25]
[--output DIR]`.

Builds the trainer as `training.train` does (the config's cached samples, if built), runs one warm-up step, then
`--steps` steps under torch.profiler (host and, on a GPU, device activity), and writes DIR/profile.txt: the ops
by host time and, on a GPU, by device time. `training.benchmark` says how long the stages take; this says which
ops fill them (a step bound by the host shows many short ops and little device time).
"""

import argparse
from pathlib import Path

import torch

from modeling_e2llm.command_line import at_least

from .benchmark import ProfileAfterWarmup, benchmark_config, in_dataset_order
from .config import TrainConfig, add_config_arguments, config_from_arguments
from .train import build_trainer

PROFILE_FILE = "profile.txt"


def profile(config: TrainConfig, steps: int, rows: int, output: Path) -> str:
    """Profile `steps` steps of the config's trainer after one warm-up step; returns the tables."""
    config = benchmark_config(config, steps, warmup=1, output=output)
    trainer = build_trainer(config)
    in_dataset_order(trainer)
    on_gpu = torch.cuda.is_available()
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if on_gpu else []))
    trainer.add_callback(ProfileAfterWarmup(1, profiler))
    trainer.train()
    ops = profiler.key_averages()
    sorts = ["self_cpu_time_total"] + (["self_device_time_total"] if on_gpu else [])
    return "\n\n".join(f"Ops by {key}:\n{ops.table(sort_by=key, row_limit=rows)}" for key in sorts)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--steps", type=at_least(1), default=2, help="profiled steps after one warm-up step (default 2)")
    parser.add_argument("--rows", type=at_least(1), default=25, help="ops listed per table (default 25)")
    parser.add_argument("--output", default="runs/profile", help="folder for profile.txt")
    args = parser.parse_args(argv)
    config = config_from_arguments(parser, args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    tables = profile(config, args.steps, args.rows, output)
    (output / PROFILE_FILE).write_text(tables + "\n")
    print(tables)
    return tables


if __name__ == "__main__":
    main()
