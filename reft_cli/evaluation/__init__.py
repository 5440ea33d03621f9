"""Scoring adapters: tasks, the paper's scorers, generation and log-likelihood predictions."""
