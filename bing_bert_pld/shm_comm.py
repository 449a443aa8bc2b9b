"""DeepSpeed's CPU shared-memory allreduce: announce its one-time build, leave no /dev/shm files behind.

On CPU, `deepspeed.init_distributed` loads DeepSpeed's `deepspeed_shm_comm` op, JIT-compiling
it into torch's extensions directory the first time on a machine (a minute or two, silent).
When every rank of the run is on one host (WORLD_SIZE == LOCAL_SIZE) the op then gives each
rank a 66 MB POSIX shared-memory buffer, `/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_
<MASTER_PORT>_<rank>` (deepspeed/ops/csrc/cpu/comm/shm.cpp, `shm_initialize`), and never
removes it: every launch left one set per port. Each rank maps all of them before
`shm_initialize` returns, so once every rank has passed a barrier after it, the names are no
longer needed: each rank unlinks its own (the memory stays mapped until the ranks exit), and
nothing is left even if the run is killed later. `python -m bing_bert_pld.shm_comm clean
ADDR PORT` removes one run's files, for the launch scripts' exit path (a rank killed before
that barrier); it never touches another user's, address's or port's files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from . import cli

SHM_DIR = Path("/dev/shm")
BUFFER_PREFIX = "deepspeed_allreduce_buffer"  # SHM_BUFFER_NAME in shm.cpp
OP_NAME = "deepspeed_shm_comm"  # ShareMemCommBuilder.NAME
BUILD_NOTICE = ("first launch on this machine: compiling DeepSpeed's CPU communication op "
                f"({OP_NAME}, about 1-4 minutes, once; cached in {{where}})")


def buffer_path(addr: str, port: str, rank: int, uid: Optional[int] = None) -> Path:
    """The file shm.cpp creates for `rank`: "%s_%d_%s_%s" % (prefix, getuid(), addr, port), then "_%d" % rank."""
    return SHM_DIR / f"{BUFFER_PREFIX}_{os.getuid() if uid is None else uid}_{addr}_{port}_{rank}"


def run_buffers(addr: str, port: str, uid: Optional[int] = None) -> list[Path]:
    """This user's buffer files of the run at addr:port, whatever their rank."""
    prefix = buffer_path(addr, port, 0, uid).name[:-1]  # up to and including the last "_"
    if not SHM_DIR.is_dir():
        return []
    return sorted(p for p in SHM_DIR.iterdir()
                  if p.name.startswith(prefix) and p.name[len(prefix):].isdigit())


def remove_run_buffers(addr: str, port: str) -> list[Path]:
    """Unlink this user's buffer files of the run at addr:port; returns those removed."""
    removed = []
    for path in run_buffers(addr, port):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass  # another process of the run removed it first
    return removed


def release_own_buffer(barrier) -> Optional[Path]:
    """After deepspeed.init_distributed on every rank: wait until all ranks have mapped
    every buffer (`barrier()`, called by every rank whatever happens here), then unlink
    this rank's own name. Returns the path removed, None when the op made none (GPU ranks,
    ranks on several hosts, one process)."""
    barrier()
    path = buffer_path(os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""),
                       int(os.environ.get("RANK", "0")))
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def extensions_dir() -> Path:
    """torch's JIT extension root, as torch.utils.cpp_extension._get_build_directory finds
    it (without creating anything): TORCH_EXTENSIONS_DIR, else the user cache dir plus
    py<version>_<cpu|cu..|rocm..>."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accelerator = "cu" + torch.version.cuda.replace(".", "")
    else:
        accelerator = "cpu"
    version = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{version}_{accelerator}"


def build_pending() -> Optional[Path]:
    """Where the op will be compiled, when deepspeed.init_distributed is about to compile it
    (this accelerator uses it, DeepSpeed was not installed with it prebuilt, and no build
    is cached); else None."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    if installed_ops.get(builder.NAME, False):
        return None
    where = extensions_dir() / builder.NAME
    return None if (where / f"{builder.NAME}.so").is_file() else where


def announce_build(stream=None) -> bool:
    """One line before the silent build, from local rank 0 only; True when printed."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return False
    where = build_pending()
    if where is None:
        return False
    print(BUILD_NOTICE.format(where=where), file=stream or sys.stderr, flush=True)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    parser = cli.ArgumentParser("bing_bert_pld.shm_comm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, help="what to do")
    clean = commands.add_parser("clean", help="remove this user's DeepSpeed shm buffers of one run")
    clean.add_argument("addr", help="the run's MASTER_ADDR, as its ranks saw it (127.0.0.1 for one node)")
    clean.add_argument("port", help="the run's MASTER_PORT")
    args = parser.parse_args(argv)
    if not args.port.isdigit():
        print(f"error: port must be a number, got {args.port!r}", file=sys.stderr)
        return 2
    for path in remove_run_buffers(args.addr, args.port):
        print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
