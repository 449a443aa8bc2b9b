"""Start a rank the way the trainer does (engine.init_distributed), then run DeepSpeed's
shared-memory allreduce and record what happened to the /dev/shm buffers.

Writes <out>/rank<R>.json: the buffer file this rank unlinked after the init barrier,
the run's buffer files still present once every rank has initialized, and the allreduce's result (the
buffers stay mapped after their names are gone, so it must still sum correctly).
"""

import json
import os
import sys
from pathlib import Path

import torch

from bing_bert_pld import engine, shm_comm

released = []
_release = shm_comm.release_own_buffer


def recording(barrier):
    path = _release(barrier)
    released.append(str(path) if path else None)
    return path


shm_comm.release_own_buffer = recording  # engine calls it through the module


def main() -> None:
    out = Path(sys.argv[-1])  # after the launcher's --local_rank=N
    engine.init_distributed()
    import deepspeed.comm as dist

    rank = int(os.environ["RANK"])
    dist.barrier()  # every rank has released its own name
    remaining = [str(p) for p in shm_comm.run_buffers(os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])]
    value = torch.full((1024,), float(rank + 1))
    dist.inference_all_reduce(value)  # the shm path: every rank adds its buffer's contents
    dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"released": released, "remaining_after_init": remaining, "allreduce": value[:3].tolist()}))


if __name__ == "__main__":
    main()
