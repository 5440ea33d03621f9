"""`reft serve`: an OpenAI-compatible HTTP server for many ReFT adapters on one base model."""
