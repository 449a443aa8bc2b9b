"""Export a checkpoint to a Hugging Face transformers directory, from the command line.

    python -m bing_bert_pld.hf_export CHECKPOINT OUT_DIR [--vocab vocab.txt] [--cased]

CHECKPOINT is anything `bing_bert_pld.run.pretrained.read_pretrained` reads (training
output dir, checkpoint root, tag dir). OUT_DIR then loads offline with
`AutoModelForMaskedLM`, `AutoModel` and `AutoTokenizer.from_pretrained(OUT_DIR)`; what it
holds and how our names map to transformers' is bing_bert_pld.hf_adapter's, which also
imports it back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

from . import cli
from .hf_adapter import ExportError, write_hf_dir
from .model import BertForPreTraining
from .run.pretrained import Pretrained, check_names_and_shapes, read_pretrained


def export(pretrained: Pretrained, out_dir: str | Path, vocab_file: Optional[str | Path] = None,
           lowercase: Optional[bool] = None) -> Path:
    """Write a transformers directory for `pretrained`; vocab_file and lowercase default
    to what the checkpoint records."""
    vocab_file = Path(vocab_file) if vocab_file else pretrained.vocab_path
    if vocab_file is None or not vocab_file.is_file():
        raise ExportError(f"no vocab file for {pretrained.source}: none recorded in its "
                          "run_config.json or the recorded one is missing; pass --vocab")
    if lowercase is None:
        lowercase = pretrained.lowercase
    if lowercase is None:
        raise ExportError(f"{pretrained.source} does not record whether its text was lowercased; "
                          "pass --lowercase or --cased")
    # The tensors must be exactly those of the configured model (names and shapes); the
    # reference model on the meta device has the shapes without memory or initialization.
    with torch.device("meta"):
        reference = BertForPreTraining(pretrained.config)
    check_names_and_shapes(reference, pretrained.state_dict, pretrained.source)
    return write_hf_dir(out_dir, pretrained.config, pretrained.state_dict, vocab_file, lowercase,
                        pretrained.source)


def main(argv: Optional[list[str]] = None) -> int:
    parser = cli.ArgumentParser(
        "bing_bert_pld.hf_export",
        description="Export a bing_bert_pld checkpoint to a Hugging Face transformers directory")
    parser.add_argument("checkpoint", help="training output dir, checkpoint root or tag dir")
    parser.add_argument("out_dir", help="the transformers directory to write (config.json, "
                                        "model.safetensors, vocab.txt)")
    parser.add_argument("--vocab", metavar="PATH", aliases=("--vocab_file",),
                        help="vocab.txt (default: the one in run_config.json)")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="the text was lowercased (default: as recorded)")
    case.add_argument("--cased", dest="lowercase", action="store_false",
                      help="the text kept its case (default: as recorded)")
    args = parser.parse_args(argv)
    try:
        pretrained = read_pretrained(args.checkpoint)
        out = export(pretrained, args.out_dir, vocab_file=args.vocab, lowercase=args.lowercase)
    except ValueError as err:  # CheckpointError (damaged, unsafe, mismatched), ConfigError
        print(f"error: {err}", file=sys.stderr)
        return 2
    kind = "roberta-prelayernorm" if pretrained.config.pre_layer_norm else "bert"
    print(f"exported {pretrained.source} to {out} as {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
