"""Loss curves of a run (the Trainer's log history) as a PNG, with the restatement probe's when it ran.

A model trained in stages (each run `model.init_from` the previous one's `final/`) gets one curve for the whole
chain, each stage's steps after the last one's:

    python -m training.plot --output OUT_DIR RUN_FINAL_1 RUN_FINAL_2 ...   # writes log_history.json and loss.png
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("loss", "weighted loss"), ("loss_understanding", "understanding (restate)"),
          ("loss_reasoning", "reasoning (answer)"))
PROBE_CURVES = (("probe_nll_own", "held-out chunk from its own chunk token"),
                ("probe_nll_nearby", "from a nearby chunk's"), ("probe_nll_other", "from another document's"))


def save_curves(log_history: list[dict], folder: Path) -> Path:
    """Write `log_history.json` and its `loss.png` (see `plot_losses`) into `folder`; return the PNG's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log_history.json").write_text(json.dumps(log_history, indent=1))
    return plot_losses(log_history, folder / "loss.png")


def plot_losses(log_history: list[dict], path: str | Path) -> Path:
    """Write the training loss and the two tasks' losses against the step to `path` (and, beside them, the
    restatement probe's three NLLs when the log holds them); return it."""
    has_probe = any(PROBE_CURVES[0][0] in entry for entry in log_history)
    figure, panels = plt.subplots(1, 2 if has_probe else 1, figsize=(13 if has_probe else 7, 4), squeeze=False)
    _plot(panels[0][0], log_history, CURVES, "E2LLM training")
    if has_probe:
        _plot(panels[0][1], log_history, PROBE_CURVES, "restatement probe (held-out)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def _plot(axes, log_history: list[dict], curves: tuple[tuple[str, str], ...], title: str) -> None:
    for key, label in curves:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, label=label, marker="." if len(points) < 30 else None)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per target token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()


def chain_log_histories(histories: list[list[dict]]) -> list[dict]:
    """One log history for runs that continued each other: every entry of run i keeps its values, its step
    moved past the last step of runs 0..i-1 (each run's step counter restarts at 0)."""
    chained, offset = [], 0
    for history in histories:
        chained += [{**entry, "step": entry["step"] + offset} for entry in history if "step" in entry]
        offset += max((entry["step"] for entry in history if "step" in entry), default=0)
    return chained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="final/ folders (log_history.json), in training order")
    parser.add_argument("--output", type=Path, required=True, help="folder for log_history.json and loss.png")
    args = parser.parse_args(argv)
    missing = [str(run) for run in args.runs if not (run / "log_history.json").is_file()]
    if missing:
        parser.error(f"no log_history.json in {', '.join(missing)}: pass the final/ folders training.train wrote.")
    chained = chain_log_histories([json.loads((run / "log_history.json").read_text()) for run in args.runs])
    print(save_curves(chained, args.output))


if __name__ == "__main__":
    main()
