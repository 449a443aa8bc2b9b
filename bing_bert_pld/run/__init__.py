"""The run directory: what a training run leaves behind, written and read through this package only.

    layout        where everything lives (RunDir, file names, tags, `latest`)
    config        the resolved configuration: run_config.json, the data facts, the vocabulary copy
    checkpoint    publication, verification and resume of checkpoints
    safe_load     weights-only loading of .pt files
    files         digests, synced and atomic writes
    pretrained    weights, configuration and vocabulary for export and fine-tuning
    metric_names  the names of the logged scalars
    info          one run summarised (python -m bing_bert_pld.run info RUN_DIR --json)

Imports nothing itself, so that `python -m bing_bert_pld.run` and light readers stay light.
"""
