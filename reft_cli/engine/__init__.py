"""The ReFT engine: interventions, positions, architecture discovery, the ReFT model, the adapter folder format and base-model loading. Imports nothing else from reft_cli but errors."""
