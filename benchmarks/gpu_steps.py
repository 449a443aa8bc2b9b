"""The steps of the GPU check (benchmarks/gpu_check.py): what each runs and what it reads back.

Each step is a function of the run's Context that returns a result dict, or raises
StepFailed with the reason (and what it measured before failing). Commands run as child
processes through Context.command, in their own process group, so a step's time limit
ends the deepspeed launcher and its ranks too. --dry-run swaps the sizes for CPU ones
(Sizes) and keeps everything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
BF16_CONFIG = REPO / "ds_configs" / "bert_base_seq128_pld_bf16.json"
SEQ, PRED = 128, 20
# Imported by some step; a missing one fails the environment step with its name.
REQUIRED_PACKAGES = ("torch", "deepspeed", "pytorch_optimizer", "blingfire", "hjson", "pydantic",
                     "h5py", "numpy", "tokenizers", "transformers", "tensorboard", "safetensors",
                     "pytest", "psutil", "tqdm", "matplotlib", "msgpack", "ninja", "cpuinfo")
OPTIONAL_PACKAGES = ("triton", "einops", "scipy", "sklearn", "apex")
# The deepspeed launcher sometimes crashes on exit after every rank finished (exit 250).
LAUNCHER_EXIT_CRASH = "terminate called without an active exception"


class StepFailed(Exception):
    def __init__(self, message: str, result: Optional[dict] = None):
        super().__init__(message)
        self.result = result or {}


@dataclass(frozen=True)
class Sizes:
    """What differs between the GPU run and the CPU dry run."""
    accelerator: str  # DS_ACCELERATOR for the children
    pretrain_model: str  # packaged name, or "tiny-30522": bert-tiny with the corpus's vocab
    pretrain_micro_batch: int
    pretrain_accumulation: int
    pretrain_steps: int  # uninterrupted; the split run stops halfway, then resumes
    pretrain_gamma: float  # PLD's gamma: theta visibly below 1 within the run
    books: Optional[int]  # corpus books for data_prep (None: all)
    validation_fraction: float  # of the books (documents): at least one must be drawn
    duplication: int
    bench_models: dict  # label -> (model config, micro-batch)
    bench_args: tuple  # extra benchmark flags
    sdpa_args: tuple
    skip_large: bool  # the dry run: one model size
    skip_compiled: bool  # the dry run: compiling on 2 CPU cores takes minutes


GPU = Sizes(accelerator="cuda", pretrain_model="bert-base", pretrain_micro_batch=64,
            pretrain_accumulation=2, pretrain_steps=300, pretrain_gamma=0.01, books=None,
            validation_fraction=0.05, duplication=2,
            bench_models={"bert_base": ("bert-base", 128), "bert_large": ("bert-large", 128)},
            bench_args=("--bf16", "--reps", "10", "--warmup", "2"),
            sdpa_args=("--bf16", "--reps", "20", "--warmup", "3", "--model-reps", "6"),
            skip_large=False, skip_compiled=False)
DRY_RUN = Sizes(accelerator="cpu", pretrain_model="tiny-30522", pretrain_micro_batch=4,
                pretrain_accumulation=1, pretrain_steps=6, pretrain_gamma=0.2, books=4,
                validation_fraction=0.25, duplication=1,
                bench_models={"bert_base": ("bert-tiny", 4), "bert_large": ("bert-tiny", 4)},
                bench_args=("--bf16", "--reps", "1", "--warmup", "1", "--device", "cpu"),
                sdpa_args=("--bf16", "--reps", "1", "--warmup", "0", "--model-reps", "1",
                           "--device", "cpu"),
                skip_large=True, skip_compiled=True)


@dataclass
class Completed:
    returncode: Optional[int]  # None: killed at its time limit
    output: str
    seconds: float
    cpu_seconds: float = 0.0  # user + system time of the command and its children

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


@dataclass
class Context:
    """What the steps share: paths, sizes, the results so far, and how to run a command."""
    sizes: Sizes
    dry_run: bool
    corpus: Path
    work: Path  # scratch: shards, runs, checkpoints, the benchmarks' JSON
    results: dict = field(default_factory=dict)  # step name -> its record
    command: Callable[..., Completed] = None  # set by the runner: (cmd, label, timeout=None, env=None)

    def result(self, name: str) -> dict:
        return self.results.get(name, {}).get("result", {})


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_checked(ctx: Context, cmd: list[str], label: str, timeout: Optional[float] = None,
                env: Optional[dict] = None) -> Completed:
    done = ctx.command(cmd, label, timeout=timeout, env=env)
    if done.timed_out:
        raise StepFailed(f"{label}: stopped at its time limit after {done.seconds:.0f} s; "
                         f"last output: {tail(done.output, 3)}", {"output_tail": tail(done.output)})
    if done.returncode != 0:
        raise StepFailed(f"{label}: exit {done.returncode}: {tail(done.output, 3)}",
                         {"output_tail": tail(done.output)})
    return done


# ---------------------------------------------------------------- environment

PROBE = r"""
import importlib, json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": {}}
for name in sys.argv[1].split(","):
    try:
        module = importlib.import_module(name)
        info["packages"][name] = str(getattr(module, "__version__", "imported"))
    except Exception as error:
        info["packages"][name] = f"missing: {type(error).__name__}: {str(error)[:160]}"
try:
    import torch
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["cudnn"] = torch.backends.cudnn.version()
        info["flash_attention_built"] = torch.backends.cuda.is_flash_attention_available()
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
except Exception as error:
    info["torch_error"] = str(error)[:300]
print("PROBE " + json.dumps(info))
"""


def environment(ctx: Context) -> dict:
    result: dict = {}
    if shutil.which("nvidia-smi"):
        done = ctx.command(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                            "clocks.max.sm,power.limit", "--format=csv,noheader"], "nvidia-smi",
                           timeout=30)
        result["nvidia_smi"] = done.output.strip() if done.returncode == 0 else f"failed: {tail(done.output, 2)}"
        ctx.command(["nvidia-smi"], "nvidia-smi (full)", timeout=30)
    else:
        result["nvidia_smi"] = "not found"
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc:
        done = ctx.command([nvcc, "--version"], "nvcc", timeout=30)
        result["nvcc"] = tail(done.output, 2).replace("\n", " | ")
    else:
        result["nvcc"] = "not found"
    result["ninja"] = shutil.which("ninja") or "not on PATH"
    names = ",".join(REQUIRED_PACKAGES + OPTIONAL_PACKAGES)
    done = run_checked(ctx, python("-c", PROBE, names), "import probe")
    probe = next((json.loads(line[len("PROBE "):]) for line in done.output.splitlines()
                  if line.startswith("PROBE ")), None)
    if probe is None:
        raise StepFailed("the import probe printed no result", result)
    result.update(probe)
    missing = [name for name in REQUIRED_PACKAGES
               if probe["packages"].get(name, "missing").startswith("missing")]
    result["missing"] = missing
    if missing:
        raise StepFailed(f"required packages do not import: {missing} (carry their wheels: "
                         "python -m benchmarks.gpu_prepare)", result)
    if not ctx.dry_run and not probe.get("cuda_available"):
        raise StepFailed("torch sees no CUDA device", result)
    return result


# ---------------------------------------------------------------- preflight and CUDA tests

def preflight(ctx: Context) -> dict:
    cmd = python("-m", "bing_bert_pld.config_check", "--deepspeed_config", str(BF16_CONFIG),
                 "--model_config", "bert-base", "--target", "cuda")
    done = ctx.command(cmd, "config_check --target cuda")
    settings = {}
    for line in done.output.splitlines():
        match = re.match(r"^  (\S+)\s{2,}(.*)$", line)
        if match:
            settings[match.group(1)] = match.group(2)
    result = {"returncode": done.returncode, "settings": settings,
              "verdict": next((line for line in done.output.splitlines()
                               if line.startswith("config check")), None)}
    if done.returncode != 0:
        raise StepFailed(f"config_check exit {done.returncode}: {tail(done.output, 3)}", result)
    return result


def gpu_tests(ctx: Context) -> dict:
    report = ctx.work / "gpu_tests.xml"
    done = ctx.command(python("-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                              f"--junitxml={report}", "tests/test_gpu.py"), "pytest tests/test_gpu.py")
    tests = []
    if report.is_file():
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            outcome, message = "passed", None
            for kind in ("failure", "error", "skipped"):
                node = case.find(kind)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                    message = (node.get("message") or "").splitlines()[0][:300] if node.get("message") else None
            tests.append({"test": case.get("name"), "outcome": outcome,
                          "seconds": float(case.get("time") or 0), "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    result = {"returncode": done.returncode, "counts": counts, "tests": tests}
    if done.timed_out or done.returncode != 0:
        raise StepFailed(f"pytest {'stopped at its time limit' if done.timed_out else f'exit {done.returncode}'}: "
                         f"{counts}", result)
    if not tests:
        raise StepFailed("pytest ran no test", result)
    if not ctx.dry_run and counts["skipped"]:
        raise StepFailed(f"{counts['skipped']} CUDA tests skipped on the GPU machine", result)
    return result


# ---------------------------------------------------------------- data

def data(ctx: Context) -> dict:
    books, vocab = ctx.corpus / "books", ctx.corpus / "vocab.txt"
    if not books.is_dir() or not vocab.is_file():
        raise StepFailed(f"no corpus at {ctx.corpus} (books/ and vocab.txt): run "
                         "'python -m benchmarks.gpu_prepare' and carry .gpu_corpus")
    files = sorted(books.glob("*.txt"))
    if ctx.sizes.books is not None:  # the dry run: a few books
        subset = ctx.work / "books"
        subset.mkdir(exist_ok=True)
        for path in files[:ctx.sizes.books]:
            shutil.copyfile(path, subset / path.name)
        books, files = subset, files[:ctx.sizes.books]
    output = ctx.work / "data"
    run_checked(ctx, python("-m", "data_prep", "all", "--source", f"bible=books:{books}",
                            "--vocab", str(vocab), "--seq-len", str(SEQ), "--max-pred", str(PRED),
                            "--duplication", str(ctx.sizes.duplication), "--output", str(output),
                            "--validation-fraction", str(ctx.sizes.validation_fraction),
                            "--work-dir", str(ctx.work / "data_work"), "--no-progress",
                            "--processes", str(min(8, os.cpu_count() or 1))), "data_prep all")
    return {"books": len(files), "text_mb": round(sum(p.stat().st_size for p in files) / 1e6, 2),
            "shards": sorted(p.name for p in (output / "train").glob("*.hdf5")),
            "padding": padding_stats(output / "train", ctx.sizes.pretrain_micro_batch)}


def padding_stats(train: Path, micro_batch: int) -> dict:
    """How often a row, and a micro-batch of random rows, has no padding: how often the
    model's mask-free attention path is taken on these shards."""
    import h5py
    import numpy as np

    full = np.concatenate([h5py.File(path, "r")["input_mask"][:].all(axis=1)
                           for path in sorted(train.glob("*.hdf5"))])
    rng = np.random.default_rng(0)
    stats = {"rows": int(full.size), "rows_without_padding": round(float(full.mean()), 4)}
    for size in sorted({8, 64, micro_batch}):
        batches = full[rng.permutation(full.size)[:full.size // size * size]].reshape(-1, size)
        stats[f"micro_batches_of_{size}_without_padding"] = round(float(batches.all(axis=1).mean()), 4)
    return stats


# ---------------------------------------------------------------- pretraining and resume

def pretrain_files(ctx: Context) -> tuple[Path, str]:
    """The derived DeepSpeed JSON and the model config, written once into the work dir."""
    sizes = ctx.sizes
    ds_path = ctx.work / "pretrain_ds.json"
    if not ds_path.is_file():
        config = json.loads(BF16_CONFIG.read_text())
        config.pop("train_batch_size")  # micro x accumulation x world size decides it
        config.update(train_micro_batch_size_per_gpu=sizes.pretrain_micro_batch,
                      gradient_accumulation_steps=sizes.pretrain_accumulation, steps_per_print=10**6)
        config["scheduler"]["params"].update(total_steps=sizes.pretrain_steps, warmup_proportion=0.1)
        config["progressive_layer_drop"]["gamma"] = sizes.pretrain_gamma
        ds_path.write_text(json.dumps(config, indent=1))
    model = sizes.pretrain_model
    if model == "tiny-30522":  # bert-tiny's shape with the corpus vocabulary's size
        tiny = json.loads((REPO / "bing_bert_pld" / "configs" / "bert-tiny.json").read_text())
        tiny["vocab_size"] = sum(1 for _ in (ctx.corpus / "vocab.txt").open())
        model_path = ctx.work / "model_tiny_30522.json"
        model_path.write_text(json.dumps(tiny, indent=1))
        model = str(model_path)
    return ds_path, model


def launch(ctx: Context, run: str, max_steps: int, label: str) -> dict:
    # Here, not at the top: the environment step runs before the package's imports are known to work.
    from bing_bert_pld.metrics_log import read_metrics
    from bing_bert_pld.run import metric_names as names
    from bing_bert_pld.run.layout import RunDir

    ds_path, model = pretrain_files(ctx)
    data_dir, output = ctx.work / "data", ctx.work / "runs" / run
    cmd = python("-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port",
                 str(free_port()), "--module", "bing_bert_pld.train",
                 "--deepspeed_config", str(ds_path), "--model_config", model,
                 "--train_dir", str(data_dir / "train"), "--val_dir", str(data_dir / "validation"),
                 "--output_dir", str(output), "--max_steps", str(max_steps),
                 "--log_interval", "1", "--val_interval", str(10**6), "--val_batches", "4",
                 "--checkpoint_interval", str(10**6), "--vocab_file", str(ctx.corpus / "vocab.txt"),
                 "--seed", "42")
    done = ctx.command(cmd, label)
    rows = read_metrics(RunDir(output))
    train = [row for row in rows if names.TRAIN_LOSS in row]  # validation writes rows of its own
    losses = {row["step"]: row[names.TRAIN_LOSS] for row in train}
    result = {"deepspeed_config": json.loads(ds_path.read_text()), "model_config": model,
              "returncode": done.returncode, "seconds": round(done.seconds, 1),
              "last_step": max(losses, default=0), "losses": losses,
              "resumed": "resumed from" in done.output,
              "optimizer_route": grep(done.output, "optimizer route:"),
              "optimizer_fallback": grep(done.output, "optimizer fallback:"),
              "samples_per_sec_median": median_of(train, names.SAMPLES_PER_SEC),
              "step_time_s_median": median_of(train, names.STEP_TIME),
              "final": {k: train[-1].get(k) for k in (names.THETA, names.ACTIVE, names.LR)}
              if train else {},
              "val_loss": next((row[names.VAL_LOSS] for row in reversed(rows) if names.VAL_LOSS in row),
                               None)}
    finished = result["last_step"] >= max_steps
    crashed_after_work = done.returncode == 250 and LAUNCHER_EXIT_CRASH in done.output
    if done.timed_out or not finished or not (done.returncode == 0 or crashed_after_work):
        why = ("stopped at its time limit" if done.timed_out else f"exit {done.returncode}")
        raise StepFailed(f"{label}: {why}, reached step {result['last_step']} of {max_steps}: "
                         f"{tail(done.output, 3)}", result | {"output_tail": tail(done.output)})
    return result


def grep(text: str, marker: str) -> Optional[str]:
    return next((line[line.index(marker):].strip() for line in text.splitlines() if marker in line), None)


def median_of(rows: list[dict], key: str) -> Optional[float]:
    values = [row[key] for row in rows[len(rows) // 2:] if key in row]  # the second half: warm
    return statistics.median(values) if values else None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pretrain_straight(ctx: Context) -> dict:
    return launch(ctx, "straight", ctx.sizes.pretrain_steps, "pretrain, uninterrupted")


def pretrain_stop(ctx: Context) -> dict:
    return launch(ctx, "split", ctx.sizes.pretrain_steps // 2, "pretrain, first half")


def pretrain_resume(ctx: Context) -> dict:
    result = launch(ctx, "split", ctx.sizes.pretrain_steps, "pretrain, resumed")
    if not result["resumed"]:
        raise StepFailed("the second launch did not resume (no 'resumed from' line)", result)
    return result


def resume_check(ctx: Context) -> dict:
    """Loss falls; the resumed half reproduces the uninterrupted run. On CPU exactly; on
    a GPU within the run-to-run difference of the first half (the two runs computed the
    same steps in separate processes, and some CUDA kernels sum in a varying order)."""
    straight = {int(k): v for k, v in ctx.result("pretrain_straight")["losses"].items()}
    split = {int(k): v for k, v in ctx.result("pretrain_resume")["losses"].items()}
    half, steps = ctx.sizes.pretrain_steps // 2, ctx.sizes.pretrain_steps
    if sorted(straight) != list(range(1, steps + 1)) or sorted(split) != list(range(1, steps + 1)):
        raise StepFailed(f"losses missing: uninterrupted run logged {len(straight)} steps, "
                         f"split run {len(split)}, of {steps}")
    first = [abs(straight[s] - split[s]) for s in range(1, half + 1)]
    resumed = [abs(straight[s] - split[s]) for s in range(half + 1, steps + 1)]
    tolerance = 0.0 if ctx.dry_run else max(3 * max(first), 0.02)
    window = max(1, steps // 10)
    start = statistics.fmean(straight[s] for s in range(1, window + 1))
    end = statistics.fmean(straight[s] for s in range(steps - window + 1, steps + 1))
    result = {"steps": steps, "resumed_at": half, "window": window,
              "loss_start": start, "loss_end": end, "loss_falls": end < start,
              "first_half_max_abs_diff": max(first), "resumed_max_abs_diff": max(resumed),
              "resumed_mean_abs_diff": statistics.fmean(resumed), "tolerance": tolerance,
              "resume_reproduces": max(resumed) <= tolerance}
    problems = []
    if not result["loss_falls"]:
        problems.append(f"loss did not fall: mean of the first {window} steps {start:.4f}, "
                        f"of the last {window} {end:.4f}")
    if not result["resume_reproduces"]:
        problems.append(f"resumed losses differ from the uninterrupted run's by up to "
                        f"{max(resumed):.3g} (tolerance {tolerance:.3g})")
    if problems:
        raise StepFailed("; ".join(problems), result)
    return result


# ---------------------------------------------------------------- SDPA and benchmarks

def benchmark(name: str, module: str, model: str, batch: int,
              extra: tuple = ()) -> Callable[[Context], dict]:
    def step(ctx: Context) -> dict:
        out = ctx.work / f"{name}.json"
        cmd = python("-m", f"benchmarks.{module}", "--model-config", model, "--batch-size",
                     str(batch), "--seq-len", str(SEQ), "--max-pred", str(PRED), "--json", str(out),
                     *(ctx.sizes.sdpa_args if module == "sdpa_backends" else ctx.sizes.bench_args),
                     *extra)
        done = ctx.command(cmd, f"{module} {model} batch {batch} {' '.join(extra)}".strip())
        result = json.loads(out.read_text()) if out.is_file() else {}
        if done.timed_out or done.returncode != 0 or not result:
            why = ("stopped at its time limit" if done.timed_out else f"exit {done.returncode}")
            raise StepFailed(f"{module}: {why}: {tail(done.output, 3)}",
                             result | {"output_tail": tail(done.output)})
        return result
    return step


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], dict]
    timeout_s: float  # on the GPU; the dry run allows DRY_RUN_TIMEOUT_S
    needs: tuple = ()
    skip: Optional[str] = None  # why this step does not run in this mode


DRY_RUN_TIMEOUT_S = 240
DRY_RUN_SKIPS_LARGE = "the dry run covers one model size"
DRY_RUN_SKIPS_COMPILED = ("the dry run does not compile (minutes on CPU); tests/test_model.py "
                          "compiles the layers with aot_eager")


def plan(sizes: Sizes) -> list[Step]:
    """The steps in order: what the table needs most comes first, so a run cut short by
    its budget still fills the base rows."""
    steps = [
        Step("environment", environment, 60),
        Step("preflight", preflight, 300),
        Step("gpu_tests", gpu_tests, 240, needs=("environment",)),
        Step("data", data, 120),
        Step("pretrain_straight", pretrain_straight, 150, needs=("data",)),
        Step("pretrain_stop", pretrain_stop, 120, needs=("data",)),
        Step("pretrain_resume", pretrain_resume, 120, needs=("pretrain_stop",)),
        Step("resume_check", resume_check, 10, needs=("pretrain_straight", "pretrain_resume")),
    ]
    for label, (model, batch) in sizes.bench_models.items():
        for name, module, extra, timeout in (
                (f"sdpa_{label}", "sdpa_backends", (), 90),
                (f"pld_speedup_{label}", "pld_speedup", (), 90),
                (f"pld_speedup_{label}_compiled", "pld_speedup", ("--compile-layers",), 180),
                (f"vs_huggingface_{label}", "vs_huggingface", (), 120),
                (f"vs_huggingface_{label}_compiled", "vs_huggingface",
                 ("--compile-layers", "--compile-hf"), 240)):
            skip = None
            if sizes.skip_large and label != "bert_base":
                skip = DRY_RUN_SKIPS_LARGE
            elif sizes.skip_compiled and "--compile-layers" in extra:
                skip = DRY_RUN_SKIPS_COMPILED
            steps.append(Step(name, benchmark(name, module, model, batch, extra), timeout, skip=skip))
    return steps
