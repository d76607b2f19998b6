"""Efficiency benchmark: E2LLM's decoder reads one token per chunk (or per k encoder tokens, with the
compression knob) instead of every context token.

    python -m evaluation.efficiency --output DIR [--model PATH | --encoder PATH --decoder PATH]
                                    [--encoder-tokens-per-chunk-token K] [--fast-encoder]
                                    [--max-tokens 1048576] [--repeats 3] [--threads N]

- Up to the decoder's window (1K, 2K, 4K, 8K context tokens by default; the largest is cut so that the
  plain prompt and the answer fit), each system answers one question with `--new-tokens` tokens: `e2llm`
  (as the model ships: with hybrid recall if it is on), `e2llm_plain` (hybrid recall off; only when the model
  ships it on), `rag_topK` for each `--top-k` K (the K chunks hybrid recall's ranking puts first, as raw text;
  by default 5, as many passages as hybrid recall quotes, and the paper's 40) and `full` (the same decoder
  reading the whole text). Measured: time to first token (prefill, from raw text), total time, peak RSS and
  working memory (peak above the RSS right after loading).
- Beyond the window (16K ... --max-tokens), the E2LLM systems, with the smallest chunk size at which the
  longest context's chunk tokens fit the window (refused where none does: with the knob a context of N
  encoder tokens takes at least N / K chunk tokens, whatever the chunk size), and RAG up to
  RAG_LONG_MAX_TOKENS.
- `--fast-encoder`: E2LLM with the int8 CPU encoder (`quantize_encoder`) as one more system, `e2llm_int8`,
  beside the fp32 E2LLM in both sections.
- Context cache: --cache-questions questions about one --cache-tokens document, re-encoded for each
  question, encoded once, or encoded once with the decoder's prefix keys/values reused (`generate`'s
  `reuse_prefix`); with hybrid recall as the model ships it and, when that is on, off. Besides the totals,
  each question's time to first token (median over the questions).
- The machine's fp32 matmul peak (torch.mm, --threads threads), before and after, and the encoder's
  achieved FLOP/s as a fraction of it.

Every measurement runs in its own process (`evaluation.efficiency_worker`), so peaks don't mix; the
systems alternate within each repetition, so ratios hold on a noisy machine; medians are reported.
Writes DIR/efficiency.json (every figure and the machine), and with `evaluation.efficiency_report`
DIR/time.png, DIR/memory.png and DIR/summary.md (ratios and targets). Texts: Paul Graham essays,
repeated as needed. Take final figures on a quiet machine: the summary flags a run during which other
processes used the CPU.
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
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from modeling_e2llm import flops
from modeling_e2llm.command_line import at_least

from .efficiency_report import save_plots, summary_markdown
from .efficiency_worker import load_benchmark_model
from .niah import DEFAULT_HAYSTACK, haystack_prefix, load_haystack_essays
from .systems import FullSystem

ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE, SUMMARY_FILE = "efficiency.json", "summary.md"
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
# RAG runs beyond the window up to here (100K, where the issue compares it): past it, its cost is encoding every
# chunk to rank it, as E2LLM's rows already show, and each 1M-token run takes minutes.
RAG_LONG_MAX_TOKENS = 131_072
RAG_TOP_KS = (5, 40)  # as many passages as hybrid recall quotes by default, and the paper's top 40
ONE_MILLION = 1_000_000
TARGETS = {"prefill_speedup": 25.0, "working_memory_ratio": 10.0, "peak_rss_1m_mb": 4096.0,
           "linearity": 1.2, "encoder_matmul_fraction": 0.70, "cache_speedup": 5.0, "cached_question_ttft_s": 1.0}
# The context cache targets are set for this many questions about a document this long (nominal tokens).
CACHE_TARGET_QUESTIONS, CACHE_TARGET_TOKENS = 10, 100_000
# Context cache runs: re-encoded for each question, encoded once, encoded once and the decoder prefix reused.
CACHE_MODES = ("uncached", "cached", "cached-kv")
# Their sections: hybrid recall as the model ships it, and off (measured only when the model ships it on).
CACHE_SECTIONS = {"cache": None, "cache-no-hybrid": 0}  # section -> generate's hybrid_top_k
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
            "platform": platform.platform(), "load_average_start": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def matmul_flops_per_s(size: int, threads: int, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of torch.mm on two size x size matrices with `threads` threads."""
    torch.set_num_threads(threads)
    return flops.matmul_flops_per_s(size, repeats=repeats)


def chunk_size_that_fits(processor, text: str, max_chunk_tokens: int) -> int:
    """The processor's chunk size, or the smallest larger one (steps of 64 characters) at which `text`
    makes at most `max_chunk_tokens` chunk tokens; refused when even one chunk of the whole text (split only
    where the encoder's token limit forces it) makes more."""
    trial = copy.copy(processor)
    size = processor.chunk_size
    while (count := _chunk_tokens(trial, size, text)) > max_chunk_tokens:
        if size >= len(text):
            raise ValueError(f"No chunk size fits the {len(text):,}-character text in {max_chunk_tokens:,} chunk "
                             f"tokens (it takes at least {count:,}): lower --max-tokens, or pool more encoder tokens per "
                             "chunk token (--encoder-tokens-per-chunk-token).")
        # Chunks are cut back to sentence ends, so their count falls a little slower than 1/size.
        size = max(size + _CHUNK_SIZE_STEP, -(-size * count // max_chunk_tokens // _CHUNK_SIZE_STEP) * _CHUNK_SIZE_STEP)
    return size


def _chunk_tokens(processor, size: int, text: str) -> int:
    processor.chunk_size = size
    return processor.encode_chunks([text])["num_chunk_tokens"][0]


def write_texts(essays: list[str], tokenizer, lengths: dict[int, int], folder: Path) -> dict[int, tuple[int, Path]]:
    """For each nominal length, a text of `lengths[nominal]` decoder tokens saved under `folder`:
    nominal -> (its token count, path)."""
    texts = {}
    for nominal, tokens in lengths.items():
        text = haystack_prefix(essays, tokenizer, tokens)
        path = folder / f"context-{tokens}.txt"  # by content: sections may share a nominal length
        path.write_text(text, encoding="utf-8")
        texts[nominal] = (len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]), path)
    return texts


def benchmark_systems(top_ks: list[int], hybrid: bool, fast_encoder: bool) -> list[str]:
    """The systems one run compares, in table order (see the module docstring)."""
    return ["e2llm", *["e2llm_plain"] * hybrid, *["e2llm_int8"] * fast_encoder, *[f"rag_top{k}" for k in top_ks],
            "full"]


def plan_jobs(compare: dict, long: dict, cache: tuple[int, Path], repeats: int, long_chunk_size: int,
              systems: list[str], hybrid: bool = False) -> list[dict]:
    """Every worker run, repetition by repetition; the systems' order flips each repetition so that a
    slow phase of the machine hits them all alike. `hybrid`: the model ships with hybrid recall on, so the
    context cache is measured with it off too."""
    jobs = []
    for repeat in range(repeats):
        order = systems if repeat % 2 == 0 else systems[::-1]
        for tokens, path in compare.values():
            jobs += [{"section": "compare", "system": system, "context_tokens": tokens, "repeat": repeat,
                      "text_path": str(path)} for system in order]
        jobs += [{"section": "long", "system": system, "context_tokens": tokens, "repeat": repeat,
                  "text_path": str(path), "chunk_size": long_chunk_size}
                 for tokens, path in long.values() for system in order
                 if system.startswith("e2llm") or (system.startswith("rag") and tokens <= RAG_LONG_MAX_TOKENS)]
        modes = CACHE_MODES if repeat % 2 == 0 else CACHE_MODES[::-1]
        jobs += [{"section": section, "system": mode, "context_tokens": cache[0], "repeat": repeat,
                  "text_path": str(cache[1])} for section in list(CACHE_SECTIONS)[:1 + hybrid] for mode in modes]
    return jobs


def system_spec(system: str) -> dict:
    """How the worker runs a benchmark system: its `evaluation.systems` name and settings."""
    if system.startswith("rag_top"):
        return {"system": "rag", "top_k": int(system.removeprefix("rag_top"))}
    return {"system": "e2llm" if system.startswith("e2llm") else system, "fast_encoder": system == "e2llm_int8",
            "hybrid_top_k": 0 if system == "e2llm_plain" else None}  # None: as the processor ships it


def worker_spec(job: dict, settings: dict) -> dict:
    spec = {"model": settings["model"], "encoder": settings["encoder"], "decoder": settings["decoder"],
            "encoder_tokens_per_chunk_token": settings["encoder_tokens_per_chunk_token"],
            "threads": settings["threads"], "new_tokens": settings["new_tokens"],
            "encoder_batch_size": settings["encoder_batch_size"], "text_path": job["text_path"],
            "chunk_size": job.get("chunk_size")}
    if job["section"] in CACHE_SECTIONS:
        questions = list(CACHE_QUESTIONS * (1 + settings["cache_questions"] // len(CACHE_QUESTIONS)))
        return {**spec, "mode": "questions", "cached": job["system"] != "uncached",
                "reuse_prefix": job["system"] == "cached-kv", "hybrid_top_k": CACHE_SECTIONS[job["section"]],
                "questions": questions[:settings["cache_questions"]]}
    return {**spec, "mode": "answer", "question": QUESTION, **system_spec(job["system"])}


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
        for other, by_length in compare.items():  # the E2LLM variants too: their cost relative to E2LLM's
            figures = by_length.get(tokens)
            if other == "e2llm" or figures is None:
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
    # Measured only at the targets' own setting: a shorter document or fewer questions would flatter or wrong it.
    settings = results.get("settings", {})
    reused = results.get("context_cache", {}).get("cache", {}).get("cached-kv", {})
    at_target_length = settings.get("cache_tokens", 0) >= CACHE_TARGET_TOKENS
    at_target_count = settings.get("cache_questions") == CACHE_TARGET_QUESTIONS
    speedup = reused.get("speedup") if at_target_length and at_target_count else None
    ttft = reused.get("question_ttft_s") if at_target_length else None
    return [
        target("prefill_speedup", f"prefill at {top} tokens: full context / E2LLM >= 25x", prefill,
               prefill is not None and prefill >= TARGETS["prefill_speedup"]),
        target("working_memory_ratio", f"working memory at {top} tokens: full context / E2LLM >= 10x", working,
               working is not None and working >= TARGETS["working_memory_ratio"]),
        target("peak_rss_1m_mb", f"process peak RSS at {longest or ONE_MILLION} tokens < 4096 MB",
               peak if reaches_1m else None, peak is not None and peak < TARGETS["peak_rss_1m_mb"]),
        target("linearity", "total time from 64K to 1M tokens within 1.2x of a straight line",
               deviation if reaches_1m else None, deviation is not None and deviation <= TARGETS["linearity"]),
        target("encoder_matmul_fraction", f"raw text -> chunk tokens at {largest} tokens: >= 70% of the matmul peak",
               fraction, fraction is not None and fraction >= TARGETS["encoder_matmul_fraction"]),
        target("cache_speedup", f"context cache, {CACHE_TARGET_QUESTIONS} questions about a {CACHE_TARGET_TOKENS:,}-token "
               "document (hybrid as shipped): re-encoded each time / encoded once with prefix reuse >= 5x", speedup,
               speedup is not None and speedup >= TARGETS["cache_speedup"]),
        target("cached_question_ttft_s", f"context cache at {CACHE_TARGET_TOKENS:,} tokens (hybrid as shipped): a "
               "question's time to first token with prefix reuse, median <= 1 s", ttft,
               ttft is not None and ttft <= TARGETS["cached_question_ttft_s"]),
    ]


def context_cache_summary(medians: dict, tokens: int) -> dict:
    """section (hybrid as shipped, off) -> each mode's median total, encoding and per-question time to first
    token, and how many times faster than re-encoding for each question."""
    summary = {}
    for section in CACHE_SECTIONS:
        runs = {mode: medians.get(section, {}).get(mode, {}).get(tokens) for mode in CACHE_MODES}
        if not any(runs.values()):
            continue
        uncached = (runs["uncached"] or {}).get("total_s")
        summary[section] = {"context_tokens": tokens} | {
            mode: {"total_s": figures["total_s"], "encode_s": figures["encode_s"],
                   "question_ttft_s": figures["question_ttft_s"], "speedup": _ratio(uncached, figures["total_s"])}
            for mode, figures in runs.items() if figures}
    return summary


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation.efficiency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="folder for efficiency.json, plots, summary.md")
    parser.add_argument("--model", default=None, help="saved E2LLM folder or Hub id (default: the embedded default)")
    parser.add_argument("--encoder", default=None, help="encoder folder, with --decoder: a new composite")
    parser.add_argument("--decoder", default=None, help="decoder folder, with --encoder")
    parser.add_argument("--encoder-tokens-per-chunk-token", type=at_least(1), default=None, metavar="K",
                        help="compression knob of a new composite (--encoder/--decoder, or the embedded default's "
                             "models, untrained): one chunk token per K encoder tokens (default: one per chunk)")
    parser.add_argument("--fast-encoder", action="store_true",
                        help="also run E2LLM with the int8 CPU encoder (system e2llm_int8), beside the fp32 one")
    parser.add_argument("--min-tokens", type=at_least(1), default=1024, help="shortest context (decoder tokens)")
    parser.add_argument("--max-tokens", type=at_least(1), default=1_048_576, help="longest context (decoder tokens)")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="repetitions of every measurement (median)")
    parser.add_argument("--threads", type=at_least(1), default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--new-tokens", type=at_least(1), default=32, help="tokens every answer generates")
    parser.add_argument("--top-k", type=at_least(1), nargs="+", default=list(RAG_TOP_KS),
                        help="chunks RAG retrieves, one system per value (default: 5, hybrid recall's default, and 40, "
                             "the paper's)")
    parser.add_argument("--encoder-batch-size", type=at_least(1), default=None,
                        help="chunks per encoder forward (default: the model's config)")
    parser.add_argument("--cache-tokens", type=at_least(1), default=100_000, help="length of the context cache document")
    parser.add_argument("--cache-questions", type=at_least(1), default=10, help="questions asked about it")
    parser.add_argument("--matmul-size", type=at_least(1), default=4096, help="side of the matrices of the matmul peak")
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK, help="JSONL of the texts")
    args = parser.parse_args(argv)
    if args.min_tokens > args.max_tokens:
        parser.error(f"need --min-tokens <= --max-tokens, got {args.min_tokens} and {args.max_tokens}.")
    if len(set(args.top_k)) < len(args.top_k):
        parser.error(f"--top-k takes distinct chunk counts, got {' '.join(map(str, args.top_k))}.")
    if (args.encoder is None) != (args.decoder is None) or (args.encoder and args.model):
        parser.error("give --encoder and --decoder together, or --model alone (or neither: the embedded default).")
    if args.model and args.encoder_tokens_per_chunk_token is not None:
        parser.error("--encoder-tokens-per-chunk-token composes a new model; a saved --model keeps its own setting.")
    return args


def benchmark_settings(args: argparse.Namespace) -> tuple[dict, object]:
    """What every worker needs, with the decoder's window and the room it leaves; and the processor."""
    model, processor, label = load_benchmark_model(args.model, args.encoder, args.decoder,
                                                   args.encoder_tokens_per_chunk_token)
    window = model.config.text_config.max_position_embeddings
    # The full-context prompt and the answer must fit the window: that caps the comparison's lengths.
    plain_prompt = len(FullSystem(model, processor).prompt_ids("", QUESTION, False, args.new_tokens))
    chunk_prompt = processor.encode_prompts([0], QUESTION)["input_ids"].shape[1]
    if processor.hybrid_top_k:  # hybrid recall adds raw passages up to their budget after the chunk tokens
        chunk_prompt += processor.hybrid_token_budget
    settings = {"model": args.model, "encoder": args.encoder, "decoder": args.decoder, "model_label": label,
                "encoder_tokens_per_chunk_token": model.config.encoder_tokens_per_chunk_token,
                "threads": args.threads, "repeats": args.repeats, "new_tokens": args.new_tokens,
                "systems": benchmark_systems(args.top_k, bool(processor.hybrid_top_k), args.fast_encoder),
                "question": QUESTION, "window": window, "chunk_size": processor.chunk_size,
                "encoder_batch_size": args.encoder_batch_size or model.config.encoder_batch_size,
                "hybrid_top_k": processor.hybrid_top_k,
                "text_room": window - args.new_tokens - plain_prompt - _PROMPT_MARGIN,
                "chunk_room": window - args.new_tokens - chunk_prompt,
                "cache_questions": args.cache_questions, "cache_tokens": args.cache_tokens,
                "matmul_size": args.matmul_size, "fast_encoder": args.fast_encoder}
    return settings, processor


def prepare_texts(args: argparse.Namespace, settings: dict, processor, folder: Path) -> dict:
    """section -> nominal length -> (token count, text file); sets settings["long_chunk_size"]."""
    compare_lengths, long_lengths = context_lengths(args.min_tokens, args.max_tokens, settings["window"])
    essays, tokenizer = load_haystack_essays(args.haystack), processor.tokenizer
    texts = {"compare": write_texts(essays, tokenizer, {n: min(n, settings["text_room"]) for n in compare_lengths},
                                    folder),
             "long": write_texts(essays, tokenizer, {n: n for n in long_lengths}, folder),
             "cache": write_texts(essays, tokenizer, {args.cache_tokens: args.cache_tokens}, folder)}
    settings["long_chunk_size"] = None
    if long_lengths:
        longest = texts["long"][long_lengths[-1]][1].read_text(encoding="utf-8")
        settings["long_chunk_size"] = chunk_size_that_fits(processor, longest, settings["chunk_room"])
    return texts


def run_jobs(jobs: list[dict], settings: dict, folder: Path) -> list[dict]:
    """Every job's record: the job, the worker's figures (or its error) and the load average after it."""
    runs = []
    for job in (bar := tqdm(jobs, desc="efficiency", unit="run")):
        bar.set_postfix_str(f"{job['section']} {job['system']} {job['context_tokens']} tokens")
        result = run_worker(worker_spec(job, settings), folder)
        record = {key: value for key, value in job.items() if key != "text_path"}
        runs.append(record | result | {"load_average": os.getloadavg()[0]})
    return runs


def analyse(runs: list[dict], settings: dict, machine: dict, matmul: list[float], cache_tokens: int) -> dict:
    """Every figure of the results file, from the runs and the matmul measurements."""
    machine = machine | {"load_average_end": os.getloadavg(),
                         "median_load_average": statistics.median(run["load_average"] for run in runs)}
    medians, peak = median_table(runs), max(matmul)
    results = {"settings": settings, "machine": machine,
               "matmul": {"size": settings["matmul_size"], "flops_per_s": matmul, "peak_flops_per_s": peak},
               "runs": runs, "medians": medians, "ratios": comparison_ratios(medians.get("compare", {})),
               "linearity": linearity(medians.get("long", {}).get("e2llm", {})),
               "encoder_efficiency": encoder_efficiency(medians, peak),
               "context_cache": context_cache_summary(medians, cache_tokens)}
    return results | {"targets": check_targets(results)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    command = " ".join(["python -m evaluation.efficiency", *(sys.argv[1:] if argv is None else argv)])
    settings, processor = benchmark_settings(args)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="e2llm-efficiency-") as scratch:
        texts = prepare_texts(args, settings, processor, Path(scratch))
        machine = machine_description(args.threads)
        matmul = [matmul_flops_per_s(args.matmul_size, args.threads)]
        jobs = plan_jobs(texts["compare"], texts["long"], texts["cache"][args.cache_tokens], args.repeats,
                         settings["long_chunk_size"], settings["systems"], hybrid=bool(settings["hybrid_top_k"]))
        runs = run_jobs(jobs, settings, Path(scratch))
        matmul.append(matmul_flops_per_s(args.matmul_size, args.threads))
    results = {"command": command} | analyse(runs, settings, machine, matmul, texts["cache"][args.cache_tokens][0])
    (args.output / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    save_plots(results, args.output)
    (args.output / SUMMARY_FILE).write_text(summary_markdown(results))
    print(f"{len(runs)} runs -> {args.output / SUMMARY_FILE}")
    return results


if __name__ == "__main__":
    main()
