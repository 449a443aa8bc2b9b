"""The benchmark scripts behind the README's numbers, one `python -m benchmarks.<name>` command each."""
