"""Efficiency benchmark: E2LLM's decoder reads one token per chunk instead of every context token.

    python -m evaluation.efficiency --output DIR [--model PATH | --encoder PATH --decoder PATH]
                                    [--max-tokens 1048576] [--repeats 3] [--threads N]

- Up to the decoder's window (1K, 2K, 4K, 8K context tokens by default; the largest is cut so that the
  plain prompt and the answer fit): E2LLM, RAG (top-k chunks by the encoder's similarity, as raw
  text) and the same decoder reading the full text answer one question with `--new-tokens` tokens.
  Measured: time to first token (prefill, from raw text), total time, peak RSS and working memory
  (peak above the RSS right after loading).
- Beyond the window (16K ... --max-tokens), E2LLM alone, with the smallest chunk size at which the
  longest context's chunk tokens fit the window.
- Context cache: --cache-questions questions about one --cache-tokens document, re-encoded for each
  question or encoded once.
- The machine's fp32 matmul peak (torch.mm, --threads threads), before and after, and the encoder's
  achieved FLOP/s as a fraction of it.

Every measurement runs in its own process (`evaluation.efficiency_worker`), so peaks don't mix; the
systems alternate within each repetition, so ratios hold on a noisy machine; medians are reported.
Writes DIR/efficiency.json (every figure and the machine), DIR/time.png, DIR/memory.png and
DIR/summary.md (ratios and targets). Texts: Paul Graham essays, repeated as needed.
"""

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from .niah import DEFAULT_HAYSTACK, haystack_prefix, load_haystack_essays
from .systems import RAG_TOP_K, FullSystem
from .efficiency_worker import load_benchmark_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE, SUMMARY_FILE, TIME_PLOT, MEMORY_PLOT = "efficiency.json", "summary.md", "time.png", "memory.png"
SYSTEMS = ("e2llm", "rag", "full")
QUESTION = "What is the most important advice the author gives, and why?"
CACHE_QUESTIONS = (
    "What is the most important advice the author gives, and why?",
    "Which mistakes does the author warn against?",
    "What does the author say about how startups grow?",
    "How should founders pick an idea to work on?",
    "What does the author think about investors?",
    "Which examples of successful companies are mentioned?",
    "What role does luck play according to the author?",
    "How does the author describe good programmers?",
    "What does the author say about working hard?",
    "What is the author's view on schools and universities?",
)
LINEAR_FROM = 65_536  # the linearity target covers 64K tokens and up
ONE_MILLION = 1_000_000
TARGETS = {"prefill_speedup": 25.0, "working_memory_ratio": 10.0, "peak_rss_1m_mb": 4096.0,
           "linearity": 1.2, "encoder_matmul_fraction": 0.70}
_PROMPT_MARGIN = 16  # tokens: a text cut at a token boundary can re-tokenize a little longer
_CHUNK_SIZE_STEP = 64  # characters


def context_lengths(min_tokens: int, max_tokens: int, window: int) -> tuple[list[int], list[int]]:
    """Doublings from `min_tokens`, ending at `max_tokens`: those within the window, those beyond it."""
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"Need 1 <= --min-tokens <= --max-tokens, got {min_tokens} and {max_tokens}.")
    lengths, n = [], min_tokens
    while n < max_tokens:
        lengths.append(n)
        n *= 2
    lengths.append(max_tokens)
    return [n for n in lengths if n <= window], [n for n in lengths if n > window]


def machine_description(threads: int) -> dict:
    cpu_model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    return {"cpu_model": cpu_model, "cores": len(os.sched_getaffinity(0)), "torch_threads": threads,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_start": os.getloadavg()}


def matmul_flops_per_s(size: int, threads: int, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of torch.mm on two size x size matrices with `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.mm(a, b)  # warm-up: thread pool and BLAS buffers
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def chunk_size_that_fits(processor, text: str, max_chunks: int) -> int:
    """The processor's chunk size, or the smallest larger one (steps of 64 characters) at which `text`
    has at most `max_chunks` chunks."""
    trial = copy.copy(processor)
    size = processor.chunk_size
    while (count := len(_chunks(trial, size, text))) > max_chunks:
        # Chunks are cut back to sentence ends, so their count falls a little slower than 1/size.
        size = max(size + _CHUNK_SIZE_STEP, -(-size * count // max_chunks // _CHUNK_SIZE_STEP) * _CHUNK_SIZE_STEP)
    return size


def _chunks(processor, size: int, text: str) -> list:
    processor.chunk_size = size
    return processor.chunk(text)


def write_texts(essays: list[str], tokenizer, lengths: dict[int, int], folder: Path) -> dict[int, tuple[int, Path]]:
    """For each nominal length, a text of `lengths[nominal]` decoder tokens saved under `folder`:
    nominal -> (its token count, path)."""
    texts = {}
    for nominal, tokens in lengths.items():
        text = haystack_prefix(essays, tokenizer, tokens)
        path = folder / f"context-{nominal}.txt"
        path.write_text(text, encoding="utf-8")
        texts[nominal] = (len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]), path)
    return texts


def plan_jobs(compare: dict, long: dict, cache: tuple[int, Path], repeats: int, long_chunk_size: int) -> list[dict]:
    """Every worker run, repetition by repetition; the systems' order flips each repetition so that a
    slow phase of the machine hits them all alike."""
    jobs = []
    for repeat in range(repeats):
        order = SYSTEMS if repeat % 2 == 0 else SYSTEMS[::-1]
        for tokens, path in compare.values():
            jobs += [{"section": "compare", "system": system, "context_tokens": tokens, "repeat": repeat,
                      "text_path": str(path)} for system in order]
        jobs += [{"section": "long", "system": "e2llm", "context_tokens": tokens, "repeat": repeat,
                  "text_path": str(path), "chunk_size": long_chunk_size} for tokens, path in long.values()]
        modes = ("uncached", "cached") if repeat % 2 == 0 else ("cached", "uncached")
        jobs += [{"section": "cache", "system": mode, "context_tokens": cache[0], "repeat": repeat,
                  "text_path": str(cache[1])} for mode in modes]
    return jobs


def worker_spec(job: dict, settings: dict) -> dict:
    spec = {"model": settings["model"], "encoder": settings["encoder"], "decoder": settings["decoder"],
            "threads": settings["threads"], "new_tokens": settings["new_tokens"], "top_k": settings["top_k"],
            "text_path": job["text_path"], "chunk_size": job.get("chunk_size")}
    if job["section"] == "cache":
        questions = list(CACHE_QUESTIONS * (1 + settings["cache_questions"] // len(CACHE_QUESTIONS)))
        return {**spec, "mode": "questions", "cached": job["system"] == "cached",
                "questions": questions[:settings["cache_questions"]]}
    return {**spec, "mode": "answer", "system": job["system"], "question": QUESTION}


def run_worker(spec: dict, folder: Path) -> dict:
    """Run one measurement in a fresh Python; its result, or {"error": ...} if it failed."""
    spec_path, result_path = folder / "spec.json", folder / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    threads = str(spec["threads"])
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "RAYON_NUM_THREADS": threads}
    done = subprocess.run([sys.executable, "-m", "evaluation.efficiency_worker", str(spec_path), str(result_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0 or not result_path.exists():
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        print(done.stderr[-3000:], file=sys.stderr)
        return {"error": lines[-1]}
    return json.loads(result_path.read_text())


def median_table(runs: list[dict]) -> dict:
    """section -> system -> context tokens -> median of every numeric figure over the successful runs."""
    groups = {}
    for run in runs:
        if "error" not in run:
            groups.setdefault((run["section"], run["system"], run["context_tokens"]), []).append(run)
    table = {}
    for (section, system, tokens), group in sorted(groups.items()):
        keys = [key for key, value in group[0].items() if isinstance(value, (int, float))
                and not isinstance(value, bool) and key not in ("repeat", "context_tokens")]
        table.setdefault(section, {}).setdefault(system, {})[tokens] = {
            key: statistics.median(run[key] for run in group) for key in keys} | {"repetitions": len(group)}
    return table


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def comparison_ratios(compare: dict) -> dict:
    """context tokens -> other system -> how many times more it costs than E2LLM (median over median)."""
    ratios = {}
    for tokens, e2llm in compare.get("e2llm", {}).items():
        for other in ("full", "rag"):
            figures = compare.get(other, {}).get(tokens)
            if figures is None:
                continue
            ratios.setdefault(tokens, {})[other] = {
                "prefill": _ratio(figures["prefill_s"], e2llm["prefill_s"]),
                "total": _ratio(figures["total_s"], e2llm["total_s"]),
                "working_memory": _ratio(figures["working_mb"], e2llm["working_mb"]),
                "peak_memory": _ratio(figures["peak_mb"], e2llm["peak_mb"]),
                "decoder_input_tokens": _ratio(figures["decoder_input_tokens"], e2llm["decoder_input_tokens"]),
            }
    return ratios


def linearity(long: dict) -> dict | None:
    """How far E2LLM's total time from LINEAR_FROM tokens up strays from a least-squares straight line:
    the largest of measured/fitted and fitted/measured (1.0 = exactly linear). None below 3 points."""
    points = sorted((tokens, figures["total_s"]) for tokens, figures in long.items() if tokens >= LINEAR_FROM)
    if len(points) < 3:
        return None
    x, y = np.array(points, dtype=float).T
    slope, intercept = np.polyfit(x, y, 1)
    fitted = slope * x + intercept
    deviation = float(np.max(np.maximum(y / fitted, fitted / y))) if np.all(fitted > 0) else float("inf")
    return {"context_tokens": x.astype(int).tolist(), "total_s": y.tolist(), "fitted_s": fitted.tolist(),
            "seconds_per_token": float(slope), "intercept_s": float(intercept), "max_deviation": deviation}


def encoder_efficiency(medians: dict, peak_flops: float) -> dict:
    """E2LLM's encoder FLOP/s at each length: end to end (raw text -> chunk tokens: chunking,
    tokenization, encoder, adapter) and the encoder's forwards alone, and as fractions of the matmul peak."""
    rows = {}
    for section in ("compare", "long"):
        for tokens, figures in medians.get(section, {}).get("e2llm", {}).items():
            end_to_end = figures["encoder_flops"] / figures["encode_s"]
            forward = figures["encoder_flops"] / figures["encoder_s"]
            rows[tokens] = {"encoder_flops": figures["encoder_flops"], "end_to_end_flops_per_s": end_to_end,
                            "end_to_end_fraction": end_to_end / peak_flops, "forward_flops_per_s": forward,
                            "forward_fraction": forward / peak_flops}
    return rows


def check_targets(results: dict) -> list[dict]:
    """The issue's targets: value, threshold and whether it is met (None: not measured in this run)."""
    ratios, medians = results["ratios"], results["medians"]
    top = max(ratios, default=None)
    long = medians.get("long", {}).get("e2llm", {})
    longest = max(long, default=None)
    reaches_1m = longest is not None and longest >= ONE_MILLION
    line = results["linearity"]
    efficiency = results["encoder_efficiency"]
    largest = max(efficiency, default=None)

    def target(name, description, value, met):
        return {"name": name, "description": description, "value": value, "threshold": TARGETS[name],
                "met": met if value is not None else None}

    prefill = ratios[top]["full"]["prefill"] if top else None
    working = ratios[top]["full"]["working_memory"] if top else None
    peak = long[longest]["process_peak_mb"] if longest else None
    deviation = line["max_deviation"] if line else None
    fraction = efficiency[largest]["end_to_end_fraction"] if largest else None
    return [
        target("prefill_speedup", f"prefill at {top} tokens: full context / E2LLM >= 25x", prefill,
               prefill is not None and prefill >= TARGETS["prefill_speedup"]),
        target("working_memory_ratio", f"working memory at {top} tokens: full context / E2LLM >= 10x", working,
               working is not None and working >= TARGETS["working_memory_ratio"]),
        target("peak_rss_1m_mb", f"process peak RSS at {longest} tokens < 4096 MB", peak if reaches_1m else None,
               peak is not None and peak < TARGETS["peak_rss_1m_mb"]),
        target("linearity", "total time from 64K to 1M tokens within 1.2x of a straight line",
               deviation if reaches_1m else None, deviation is not None and deviation <= TARGETS["linearity"]),
        target("encoder_matmul_fraction", f"raw text -> chunk tokens at {largest} tokens: >= 70% of the matmul peak",
               fraction, fraction is not None and fraction >= TARGETS["encoder_matmul_fraction"]),
    ]


def _series(results: dict, system: str, key: str) -> tuple[list[int], list[float]]:
    """(context tokens, median `key`) of `system` over the comparison and, for E2LLM, beyond the window."""
    points = dict(results["medians"].get("compare", {}).get(system, {}))
    if system == "e2llm":
        points.update(results["medians"].get("long", {}).get("e2llm", {}))
    tokens = sorted(points)
    return tokens, [points[n][key] for n in tokens]


COLORS = {"e2llm": "tab:blue", "rag": "tab:green", "full": "tab:red"}


def _plot_lines(ax, results: dict, styles: dict[str, str]) -> None:
    """One line per system and figure (figure -> line style) over context tokens, log-log."""
    for system in SYSTEMS:
        for key, style in styles.items():
            tokens, values = _series(results, system, key)
            if tokens:
                ax.plot(tokens, values, style, marker="o", color=COLORS[system],
                        label=f"{system} {key.rsplit('_', 1)[0]}")
    ax.axvline(results["settings"]["window"], color="grey", linestyle=":", label="decoder window")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("context tokens (decoder tokenizer)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def save_plots(results: dict, folder: Path) -> None:
    """time.png: prefill and total time vs length; memory.png: working memory and peak RSS vs length."""
    figure = Figure(figsize=(7, 5))
    ax = figure.add_subplot()
    _plot_lines(ax, results, {"prefill_s": "-", "total_s": "--"})
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"Time to first token and to {results['settings']['new_tokens']} new tokens")
    figure.tight_layout()
    figure.savefig(folder / TIME_PLOT, dpi=120)

    figure = Figure(figsize=(12, 5))
    for ax, key, title in zip(figure.subplots(1, 2), ("working_mb", "peak_mb"),
                              ("Working memory (peak above the loaded weights)", "Peak RSS")):
        _plot_lines(ax, results, {key: "-"})
        ax.set_ylabel("MB (median)")
        ax.set_title(title)
    figure.tight_layout()
    figure.savefig(folder / MEMORY_PLOT, dpi=120)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def summary_markdown(results: dict) -> str:
    settings, machine, medians = results["settings"], results["machine"], results["medians"]
    compare = medians.get("compare", {})
    lines = [
        "# E2LLM efficiency benchmark", "",
        f"Model: {settings['model_label']}. Machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['torch_threads']} torch threads, torch {machine['torch_version']} ({machine['cpu_capability']}). "
        f"Load average at start {machine['load_average_start'][0]:.2f}, at end {machine['load_average_end'][0]:.2f}. "
        f"Medians of {settings['repeats']} repetition(s), each in its own process; {settings['new_tokens']} new tokens.",
        "", f"Command: `{results['command']}`", "",
        "## Targets", "", "| target | value | threshold | met |", "|---|---|---|---|",
    ]
    for target in results["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[target["met"]]
        lines.append(f"| {target['description']} | {_fmt(target['value'])} | {target['threshold']:g} | {met} |")
    lines += ["", f"## Within the window: E2LLM, RAG (top {settings['top_k']} chunks) and the full context", "",
              "| context tokens | system | decoder input tokens | prefill s | total s | working MB | peak MB "
              "| prefill x | total x | working memory x |", "|---|---|---|---|---|---|---|---|---|---|"]
    for tokens in sorted(compare.get("e2llm", {})):
        for system in SYSTEMS:
            figures = compare.get(system, {}).get(tokens)
            if figures is None:
                continue
            ratio = results["ratios"].get(tokens, {}).get(system, {})
            lines.append(f"| {tokens:,} | {system} | {_fmt(figures['decoder_input_tokens'], 0)} | "
                         f"{_fmt(figures['prefill_s'])} | {_fmt(figures['total_s'])} | {_fmt(figures['working_mb'], 1)} | "
                         f"{_fmt(figures['peak_mb'], 0)} | {_fmt(ratio.get('prefill'), 1)} | "
                         f"{_fmt(ratio.get('total'), 1)} | {_fmt(ratio.get('working_memory'), 1)} |")
    lines += ["", "Ratios (x) are the other system's figure over E2LLM's.", "",
              f"## Beyond the window: E2LLM alone (chunk size {settings['long_chunk_size']} characters)", "",
              "| context tokens | chunks | prefill s | total s | s per 1K tokens | working MB | process peak MB |",
              "|---|---|---|---|---|---|---|"]
    for tokens, figures in sorted(medians.get("long", {}).get("e2llm", {}).items()):
        lines.append(f"| {tokens:,} | {_fmt(figures['encoder_chunks'], 0)} | {_fmt(figures['prefill_s'])} | "
                     f"{_fmt(figures['total_s'])} | {_fmt(1000 * figures['total_s'] / tokens, 3)} | "
                     f"{_fmt(figures['working_mb'], 1)} | {_fmt(figures['process_peak_mb'], 0)} |")
    if results["linearity"]:
        line = results["linearity"]
        lines += ["", f"Straight-line fit from 64K tokens: {1000 * line['seconds_per_token']:.3f} s per 1K tokens "
                      f"+ {line['intercept_s']:.1f} s; largest deviation {line['max_deviation']:.3f}x."]
    matmul = results["matmul"]
    lines += ["", "## Encoder throughput", "",
              f"fp32 matmul peak ({matmul['size']}x{matmul['size']}, {machine['torch_threads']} threads): "
              f"{matmul['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (before {matmul['flops_per_s'][0] / 1e9:.1f}, "
              f"after {matmul['flops_per_s'][1] / 1e9:.1f}).", "",
              "| context tokens | encoder GFLOP | raw text -> chunk tokens GFLOP/s | of peak | encoder forward GFLOP/s "
              "| of peak |", "|---|---|---|---|---|---|"]
    for tokens, row in sorted(results["encoder_efficiency"].items()):
        lines.append(f"| {tokens:,} | {row['encoder_flops'] / 1e9:,.1f} | {row['end_to_end_flops_per_s'] / 1e9:.1f} | "
                     f"{row['end_to_end_fraction']:.0%} | {row['forward_flops_per_s'] / 1e9:.1f} | "
                     f"{row['forward_fraction']:.0%} |")
    cache = results["context_cache"]
    lines += ["", "## Context cache", "",
              f"{settings['cache_questions']} questions about one {cache['context_tokens']:,}-token document: "
              f"re-encoded each time {_fmt(cache['uncached_s'], 1)} s, encoded once {_fmt(cache['cached_s'], 1)} s "
              f"(of which encoding {_fmt(cache['cached_encode_s'], 1)} s): {_fmt(cache['speedup'], 1)}x faster.", ""]
    errors = [run for run in results["runs"] if "error" in run]
    if errors:
        lines += ["## Failed runs", ""] + [f"- {r['section']} {r['system']} {r['context_tokens']:,} tokens: "
                                           f"{r['error']}" for r in errors] + [""]
    return "\n".join(lines)


def context_cache_summary(medians: dict, tokens: int) -> dict:
    cache = medians.get("cache", {})
    uncached = cache.get("uncached", {}).get(tokens, {})
    cached = cache.get("cached", {}).get(tokens, {})
    return {"context_tokens": tokens, "uncached_s": uncached.get("total_s"), "cached_s": cached.get("total_s"),
            "cached_encode_s": cached.get("encode_s"), "speedup": _ratio(uncached.get("total_s"), cached.get("total_s"))}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation.efficiency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="folder for efficiency.json, plots, summary.md")
    parser.add_argument("--model", default=None, help="saved E2LLM folder or Hub id (default: the embedded default)")
    parser.add_argument("--encoder", default=None, help="encoder folder, with --decoder: a new composite")
    parser.add_argument("--decoder", default=None, help="decoder folder, with --encoder")
    parser.add_argument("--min-tokens", type=int, default=1024, help="shortest context (decoder tokens)")
    parser.add_argument("--max-tokens", type=int, default=1_048_576, help="longest context (decoder tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every measurement (median)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens every answer generates")
    parser.add_argument("--top-k", type=int, default=RAG_TOP_K, help="chunks RAG retrieves (paper: 40)")
    parser.add_argument("--cache-tokens", type=int, default=100_000, help="length of the context cache document")
    parser.add_argument("--cache-questions", type=int, default=10, help="questions asked about it")
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the matrices of the matmul peak")
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK, help="JSONL of the texts")
    args = parser.parse_args(argv)
    for name in ("repeats", "threads", "new_tokens", "top_k", "cache_tokens", "cache_questions", "matmul_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if (args.encoder is None) != (args.decoder is None) or (args.encoder and args.model):
        parser.error("give --encoder and --decoder together, or --model alone (or neither: the embedded default).")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    command = " ".join(["python -m evaluation.efficiency", *(sys.argv[1:] if argv is None else argv)])
    model, processor, label = load_benchmark_model(args.model, args.encoder, args.decoder)
    window = model.config.text_config.max_position_embeddings
    try:
        compare_lengths, long_lengths = context_lengths(args.min_tokens, args.max_tokens, window)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    # The full-context prompt and the answer must fit the window: that caps the comparison's lengths.
    plain_prompt = len(FullSystem(model, processor).prompt_ids("", QUESTION, False, args.new_tokens))
    room = window - args.new_tokens - plain_prompt - _PROMPT_MARGIN
    chunk_room = window - args.new_tokens - processor.encode_prompts([0], QUESTION)["input_ids"].shape[1]
    del model
    settings = {"model": args.model, "encoder": args.encoder, "decoder": args.decoder, "model_label": label,
                "threads": args.threads, "repeats": args.repeats, "new_tokens": args.new_tokens, "top_k": args.top_k,
                "question": QUESTION, "window": window, "chunk_size": processor.chunk_size,
                "cache_questions": args.cache_questions, "matmul_size": args.matmul_size}
    args.output.mkdir(parents=True, exist_ok=True)
    essays = load_haystack_essays(args.haystack)
    with tempfile.TemporaryDirectory(prefix="e2llm-efficiency-") as scratch:
        scratch = Path(scratch)
        compare = write_texts(essays, processor.tokenizer, {n: min(n, room) for n in compare_lengths}, scratch)
        long = write_texts(essays, processor.tokenizer, {n: n for n in long_lengths}, scratch)
        cache = write_texts(essays, processor.tokenizer, {args.cache_tokens: args.cache_tokens}, scratch)
        longest = long[long_lengths[-1]][1].read_text(encoding="utf-8") if long else ""
        settings["long_chunk_size"] = chunk_size_that_fits(processor, longest, chunk_room) if long else None
        machine = machine_description(args.threads)
        before = matmul_flops_per_s(args.matmul_size, args.threads)
        runs = []
        jobs = plan_jobs(compare, long, cache[args.cache_tokens], args.repeats, settings["long_chunk_size"])
        for job in (bar := tqdm(jobs, desc="efficiency", unit="run")):
            bar.set_postfix_str(f"{job['section']} {job['system']} {job['context_tokens']} tokens")
            result = run_worker(worker_spec(job, settings), scratch)
            runs.append({key: value for key, value in job.items() if key != "text_path"} | result)
        after = matmul_flops_per_s(args.matmul_size, args.threads)
    machine["load_average_end"] = os.getloadavg()
    medians = median_table(runs)
    peak = max(before, after)
    results = {"command": command, "settings": settings, "machine": machine,
               "matmul": {"size": args.matmul_size, "flops_per_s": [before, after], "peak_flops_per_s": peak},
               "runs": runs, "medians": medians, "ratios": comparison_ratios(medians.get("compare", {})),
               "linearity": linearity(medians.get("long", {}).get("e2llm", {})),
               "encoder_efficiency": encoder_efficiency(medians, peak),
               "context_cache": context_cache_summary(medians, cache[args.cache_tokens][0])}
    results["targets"] = check_targets(results)
    (args.output / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    save_plots(results, args.output)
    (args.output / SUMMARY_FILE).write_text(summary_markdown(results))
    print(f"{len(runs)} runs -> {args.output / SUMMARY_FILE}")
    return results


if __name__ == "__main__":
    main()
