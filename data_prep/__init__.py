"""data_prep: raw text (Wikipedia dumps, books, generic corpora) to verified HDF5 shards.

Stages, each resumable and each its own CLI command (`python -m data_prep <stage>`):
extract -> sentences -> vocab (optional) -> instances -> shards -> verify; `all` runs
them in order. The shard layout comes from `bing_bert_pld.schema`; see README.md.
"""
