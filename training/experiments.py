"""Comparable training runs ("arms") from one experiment file, and their restatement-probe curves as a table.

    python -m training.experiments <experiment.yaml> --arm <name>     # train one arm into runs/<experiment>/<name>
    python -m training.experiments <experiment.yaml> --arm <name> --max-steps 40   # the same, shorter
    python -m training.experiments <experiment.yaml> --table          # markdown table of the finished arms

An experiment file holds `base` (a training config, see training/config.py, without output_dir) and `arms`:
name -> the overrides that make the arm, merged into `base` section by section. A new arm is one line.
"""

import argparse
import json
import logging
from pathlib import Path

import yaml

from modeling_e2llm.command_line import at_least

from .config import TrainConfig
from .train import train

RUNS = Path("runs")


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def arm_configs(path: Path) -> dict[str, dict]:
    """Each arm's full raw config, its output_dir `runs/<experiment>/<arm>`."""
    experiment = yaml.safe_load(path.read_text())
    if not isinstance(experiment, dict) or set(experiment) != {"base", "arms"} or not experiment["arms"]:
        raise ValueError(f"{path} must hold exactly `base` (a training config) and `arms` (name -> overrides).")
    configs = {}
    for name, overrides in experiment["arms"].items():
        output = {"training": {"output_dir": str(RUNS / path.stem / name)}}
        configs[name] = merged(merged(experiment["base"], overrides or {}), output)
    return configs


def samples_per_step(training: dict) -> int:
    """Samples one optimizer step sees on one process (SFTConfig's defaults: batch 8, no accumulation)."""
    return training.get("per_device_train_batch_size", 8) * training.get("gradient_accumulation_steps", 1)


def arm_row(name: str, log_history: list[dict], batch: int) -> str:
    """One markdown row: the last probe, the probe curve (own NLL and both gaps at each probe), decoder tokens per
    sample (`num_tokens`: prompt, chunk tokens and target; "-" in runs logged before it existed) and seconds per
    step without the probes."""
    probes = [entry for entry in log_history if "probe_nll_own" in entry]
    end = next(entry for entry in reversed(log_history) if "train_runtime" in entry)
    tokens = next((entry["num_tokens"] for entry in reversed(log_history) if "num_tokens" in entry), None)
    steps = end["step"]
    probe_seconds = sum(entry["probe_seconds"] for entry in probes)
    per_step = f"{(end['train_runtime'] - probe_seconds) / steps:.1f}" + (
        f" (+{probe_seconds / len(probes):.0f} s a probe)" if probes else "")
    tokens = "-" if tokens is None else f"{tokens / (steps * batch):.0f}"
    if not probes:  # probe.every_steps 0
        return f"| {name} | {steps} | {steps * batch} | no probe | | | {tokens} | {per_step} |"
    last = probes[-1]
    curve = ", ".join(f"{p['step']}: {p['probe_nll_own']:.3f} / {p['probe_gap_nearby']:+.3f} / "
                      f"{p['probe_gap_other']:+.3f}" for p in probes)
    return (f"| {name} | {steps} | {steps * batch} | {last['probe_nll_own']:.3f} / {last['probe_nll_nearby']:.3f} / "
            f"{last['probe_nll_other']:.3f} | {_gap(last, 'nearby')} / {_gap(last, 'other')} | "
            f"{curve} | {tokens} | {per_step} |")


def _gap(probe: dict, which: str) -> str:
    """A probe's gap with its standard error ("+0.012 ± 0.041"; logs from before the probe had one: the gap)."""
    gap, error = probe[f"probe_gap_{which}"], probe.get(f"probe_gap_{which}_se")
    return f"{gap:+.3f}" if error is None else f"{gap:+.3f} ± {error:.3f}"


def table(path: Path) -> str:
    """The finished arms of experiment `path` as a markdown table (an arm not run yet says so)."""
    rows = ["| arm | steps | samples | NLL own / nearby / other (end) | gap nearby / other (end) | "
            "probe curve (step: own / gap nearby / gap other) | decoder tokens per sample | s/step |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, raw in arm_configs(path).items():
        history = Path(raw["training"]["output_dir"]) / "final" / "log_history.json"
        if not history.is_file():
            rows.append(f"| {name} | not run: no {history} | | | | | | |")
            continue
        rows.append(arm_row(name, json.loads(history.read_text()), samples_per_step(raw["training"])))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="experiment YAML (base + arms)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--arm", help="train this arm")
    action.add_argument("--table", action="store_true", help="print the finished arms' probe table (markdown)")
    parser.add_argument("--max-steps", type=at_least(1),
                        help="with --arm: stop after this many steps (the table says how many)")
    args = parser.parse_args(argv)
    try:
        arms = arm_configs(args.experiment)
        if args.table:
            return print(table(args.experiment))
        if args.arm not in arms:
            raise ValueError(f"no arm {args.arm!r}; the arms are {sorted(arms)}")
        overrides = {"training": {"max_steps": args.max_steps}} if args.max_steps else {}
        config = TrainConfig.from_dict(merged(arms[args.arm], overrides))
    except (OSError, TypeError, ValueError, yaml.YAMLError) as error:
        parser.exit(2, f"error: {args.experiment}: {error}\n")
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    train(config)


if __name__ == "__main__":
    main()
