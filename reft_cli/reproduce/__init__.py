"""Reproduction jobs: recipes, their runs and reports, and the install smoke check."""
