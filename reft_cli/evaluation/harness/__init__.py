"""The lm-evaluation-harness backend: `--model reft` (model.py), lm-eval's own task definitions
pointed at the offline data copies (offline_tasks.py), and `reft eval --harness` (run.py).

Needs the `harness` extra (`pip install 'reft[harness]'`); nothing here is imported by reft's
other commands, so reft runs without lm-eval installed.
"""
