"""Run the real trainer under the deepspeed launcher, then record what each rank holds.

Writes <output_dir>/rank<R>_digest.json: the gates this rank drew (one list per
micro-batch) and a checksum of every parameter, so a test can compare ranks.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from bing_bert_pld import train


def main() -> None:
    trainer = train.Trainer(train.parse_args(sys.argv[1:]))
    gates = []
    if trainer.pld is not None:
        record = trainer.pld.stats.record

        def recording(layer_gates):
            gates.append(list(layer_gates.keep))
            record(layer_gates)

        trainer.pld.stats.record = recording
    trainer.train()
    digest = {name: hashlib.sha256(param.detach().float().cpu().numpy().tobytes()).hexdigest()
              for name, param in trainer.engine.module.named_parameters()}
    out = Path(trainer.args.output_dir) / f"rank{dist.get_rank()}_digest.json"
    out.write_text(json.dumps({"gates": gates, "params": digest}))


if __name__ == "__main__":
    main()
