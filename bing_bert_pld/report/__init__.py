"""Compare training runs, a PLD run and its baseline, from their TensorBoard events (`python -m` runs cli).

    events    one run read: its scalars (Series by tag) and its newest run_config.json
    numbers   the comparison numbers: time per sample, time saved, time to quality, the
              unigram plateau and the checks that turn a result into a warning
    text      the summary as text: summary.md, and the console's time-per-sample lines
    plots     the PNGs (matplotlib)
    cli       the command: flags, writing --out, printing

Imports nothing itself, so that `python -m bing_bert_pld.report` imports only what it uses.
"""
