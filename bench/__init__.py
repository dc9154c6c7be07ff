"""The benchmark harness: a fast fake Mavera upstream, four targets, and the load scenarios.

`python -m bench` (or `bench/run.sh`) runs every scenario against every target, side by side, and
writes a markdown table plus raw JSON under `bench/results/`. See `bench/README.md`.
"""
