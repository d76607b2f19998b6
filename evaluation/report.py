"""Collect several runs into one comparison (systems x datasets, shaped like the paper's Table 2):

    python -m evaluation.report RUN_DIR... --output DIR

Writes DIR/comparison.md (the main table with each dataset's primary metric, then every metric of
every run) and, when NIAH runs are among them, DIR/niah_heatmaps.png with one heatmap per run.
"""

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from .harness import SUMMARY_FILE, markdown_table
from .niah import RESULTS_FILE, draw_heatmap

METRIC_LABELS = {"rouge_gmean": "ROUGE G-mean", "option_accuracy": "accuracy", "qa_f1": "F1",
                 "needle_recall": "needle recall"}
COMPARISON_FILE, HEATMAPS_FILE = "comparison.md", "niah_heatmaps.png"


def load_run(run_dir: str | Path) -> dict:
    """A run's summary.json, with its NIAH grid under "niah" when it has one, and "dir"."""
    run_dir = Path(run_dir)
    if not (run_dir / SUMMARY_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {SUMMARY_FILE}: pass folders written by evaluation.run "
                                "or evaluation.niah (a run writes it when it finishes).")
    run = json.loads((run_dir / SUMMARY_FILE).read_text())
    if (run_dir / RESULTS_FILE).is_file():
        run["niah"] = json.loads((run_dir / RESULTS_FILE).read_text())
    return {**run, "dir": str(run_dir)}


def _row_label(run: dict, several_models: bool) -> str:
    return f"{run['system']} ({run['model']})" if several_models else run["system"]


def comparison_table(runs: list[dict]) -> str:
    """Markdown: a row per system, a column per dataset, each cell the dataset's primary metric x 100
    ("k/n skipped" noted where a system could not fit some examples)."""
    several_models = len({run["model"] for run in runs}) > 1
    rows, columns, cells = {}, {}, {}
    for run in runs:
        row, column = _row_label(run, several_models), run["dataset"]
        rows.setdefault(row, None)
        columns.setdefault(column, run["primary_metric"])
        if (row, column) in cells:
            raise ValueError(f"Two runs of {row} on {column}: {cells[row, column][1]} and {run['dir']}; "
                             "pass only one of them.")
        cells[row, column] = (_cell(run), run["dir"])
    header = ["system", *(f"{column} ({METRIC_LABELS.get(metric, metric)})" for column, metric in columns.items())]
    return markdown_table(header, [[row, *(cells.get((row, column), ("",))[0] for column in columns)] for row in rows])


def _cell(run: dict) -> str:
    total = run["count"] + run["skipped"]
    if run["count"] == 0:
        return f"skipped ({total})"
    value = f"{100 * run['metrics'][run['primary_metric']]:.1f}"
    return f"{value} ({run['skipped']}/{total} skipped)" if run["skipped"] else value


def metrics_table(runs: list[dict]) -> str:
    """Markdown: every metric (x 100) of every run, with example counts and seconds per example."""
    names = list(dict.fromkeys(name for run in runs for name in run["metrics"]))
    rows = [[run["system"], run["model"], run["dataset"], run["count"], run["skipped"], run["seconds_per_example"],
             *(f"{100 * run['metrics'][name]:.1f}" if name in run["metrics"] else "" for name in names)]
            for run in runs]
    return markdown_table(["system", "model", "dataset", "n", "skipped", "s/example", *names], rows)


def save_heatmaps(niah_results: list[dict], path: str | Path) -> None:
    """All NIAH grids side by side, one shared red-to-green scale."""
    figure = Figure(figsize=(4.5 * len(niah_results) + 1, 0.5 * max(len(r["depths"]) for r in niah_results) + 3))
    axes = figure.subplots(1, len(niah_results), squeeze=False)[0]
    for ax, results in zip(axes, niah_results):
        image = draw_heatmap(ax, results)
    figure.colorbar(image, ax=list(axes), label="needle recall")
    figure.savefig(path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of evaluation.run / evaluation.niah")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        runs = [load_run(run_dir) for run_dir in args.runs]
    except FileNotFoundError as error:
        parser.exit(2, f"error: {error}\n")
    args.output.mkdir(parents=True, exist_ok=True)
    report = (f"## Comparison (scores x 100)\n\n{comparison_table(runs)}\n"
              f"## All metrics (scores x 100)\n\n{metrics_table(runs)}")
    (args.output / COMPARISON_FILE).write_text(report)
    niah_results = [run["niah"] for run in runs if "niah" in run]
    if niah_results:
        save_heatmaps(niah_results, args.output / HEATMAPS_FILE)
    print(report)
    return report


if __name__ == "__main__":
    main()
