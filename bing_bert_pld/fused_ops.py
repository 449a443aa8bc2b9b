"""Build DeepSpeed's fused optimizer ops before training, or say exactly why they cannot be built.

    python -m bing_bert_pld.fused_ops        # on the GPU machine: build/load FusedLamb and FusedAdam

DeepSpeed JIT-compiles FusedLamb and FusedAdam the first time an optimizer is constructed
(nvcc + ninja + a CUDA build of torch; cached under TORCH_EXTENSIONS_DIR afterwards). A
failure there surfaces as a compiler log in the middle of engine construction. This module
loads the op the way the optimizer itself does (the builder its module imported), and on
failure names what is missing: a CPU-only torch, no CUDA toolkit or nvcc, nvcc's CUDA major
version differing from torch's (torch refuses to build then), no ninja, or the compiler's
error lines. The trainer uses the verdict to fall back to a per-tensor library optimizer
(engine.py); config_check --target cuda prints it. Without CUDA nothing is built: the
report says so instead of passing silently.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import cli

# The module whose optimizer loads the op, and the builder name it imported: a stand-in
# for the builder put there is what FusedLamb / FusedAdam would use too.
OPS = {
    "FusedLamb": ("deepspeed.ops.lamb.fused_lamb", "FusedLambBuilder"),
    "FusedAdam": ("deepspeed.ops.adam.fused_adam", "FusedAdamBuilder"),
}
# What the trainer builds instead when an op cannot be built: per tensor, same params.
LIBRARY_FALLBACK = {"FusedLamb": "pytorch_optimizer.Lamb", "FusedAdam": "torch.optim.AdamW"}
EXCERPT_LINES = 3
EXCERPT_CHARS = 400


@dataclass(frozen=True)
class OpStatus:
    op: str
    ok: bool
    detail: str  # how long the load took, or why it failed (one line)


def load(op: str) -> OpStatus:
    """Build (first time) or load (cached) one op; never raises for a failed build."""
    module, name = OPS[op]
    start = time.perf_counter()
    try:
        builder = getattr(importlib.import_module(module), name)
        builder().load()  # as FusedLamb and FusedAdam call it
    except Exception as err:  # the builders fail with RuntimeError, OSError, ValueError, ...
        return OpStatus(op, False, diagnose(err))
    return OpStatus(op, True, f"built/loaded in {time.perf_counter() - start:.1f} s")


def diagnose(err: BaseException) -> str:
    """One line: the missing prerequisites, the compiler's error lines, else the error itself."""
    parts = missing_prerequisites()
    excerpt = compiler_error_excerpt(str(err))
    if excerpt:
        parts.append(f"compiler error: {excerpt}")
    if not parts:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        parts.append(f"{type(err).__name__}: {first}"[:EXCERPT_CHARS])
    return "; ".join(parts)


def missing_prerequisites() -> list[str]:
    """What a JIT build of a CUDA op needs and this machine lacks, each as a short sentence."""
    import torch
    import torch.utils.cpp_extension as cpp

    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")
    cuda_home = cpp.CUDA_HOME
    if cuda_home is None:
        missing.append("no CUDA toolkit: CUDA_HOME is unset and no nvcc was found on PATH")
    else:
        nvcc = Path(cuda_home) / "bin" / "nvcc"
        release = nvcc_release(nvcc)
        if release is None:
            missing.append(f"nvcc not runnable at {nvcc} (CUDA_HOME={cuda_home})")
        elif torch.version.cuda is not None and release.split(".")[0] != torch.version.cuda.split(".")[0]:
            missing.append(f"nvcc {release} at {nvcc} and torch's CUDA {torch.version.cuda} differ "
                           "in major version (torch refuses to build extensions then)")
    if not cpp.is_ninja_available():
        missing.append("ninja not found on PATH (pip install ninja)")
    return missing


def nvcc_release(nvcc: Path) -> Optional[str]:
    """'13.0' from `nvcc --version`, or None when it cannot be run."""
    try:
        output = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True,
                                timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+\.\d+)", output)
    return found.group(1) if found else None


def compiler_error_excerpt(log: str) -> str:
    """The first few compiler error lines of a failed build (torch puts the build log in
    the exception's message), joined into one line."""
    lines = [line.strip() for line in log.splitlines()]
    errors = [line for line in lines if re.search(r"\berror\b|fatal", line, re.IGNORECASE)
              and not line.startswith("Error building extension")]
    return " | ".join(errors[:EXCERPT_LINES])[:EXCERPT_CHARS]


def cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def report(ops: tuple[str, ...] = tuple(OPS)) -> list[OpStatus]:
    """Build every op in `ops` on a CUDA machine; on any other machine an empty list."""
    return [load(op) for op in ops] if cuda_present() else []


def main(argv: Optional[list[str]] = None) -> int:
    cli.ArgumentParser("bing_bert_pld.fused_ops", description=(
        "Build DeepSpeed's fused optimizer ops (FusedLamb, FusedAdam) on this CUDA machine, or "
        "say why they cannot be built; exit 1 if one cannot. Takes no arguments.")).parse_args(argv)
    import torch

    if not cuda_present():
        print(f"fused ops: not applicable here: no CUDA device (torch {torch.__version__}, "
              "torch.cuda.is_available() is False); nothing was built")
        return 0
    statuses = report()
    for status in statuses:
        print(f"{status.op}: {'ok, ' if status.ok else 'cannot be built: '}{status.detail}")
    return 0 if all(status.ok for status in statuses) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
