"""GLUE fine-tuning from PLD (or baseline) pretraining checkpoints.

- data.py: the nine tasks read from the standard GLUE layout, tokenized with the
  pretraining vocabulary, batched as named tensors.
- metrics.py: GLUE's metrics (accuracy, F1, Matthews correlation, Pearson, Spearman).
- model.py: BertModel + a classification/regression head on the pooled output.
- finetune.py: the entry point (deepspeed launcher or plain python).
- summary.py: the table over tasks and seeds from the runs' results.json files.
"""
