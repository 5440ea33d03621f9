"""Generation with one or many adapters: sessions over one base model, mixed-adapter batches."""
