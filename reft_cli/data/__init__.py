"""Training and evaluation rows: sources, prompt templates, tokenized examples and collation."""
