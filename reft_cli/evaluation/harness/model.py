"""`--model reft`: lm-evaluation-harness's HF model class with a ReFT adapter, a LoRA one, or none.

HFLM does the tokenizing, batching, caching and scoring; this class loads the model through reft's
one loader and puts the interventions where they belong. For log-likelihood, lm-eval hands the
model right-padded context + continuation rows and no attention mask; each row's context length
comes from `ContextLengths`, so the edits land on the context and never on the continuation or the
padding, and a batch scores as its rows one at a time. For `generate_until`, lm-eval left-pads the
prompts: the whole prompt is the ReFT prompt, edited on the prefill pass only (the edits live on in
the KV cache). A LoRA folder changes every position, so HFLM's own paths serve it unchanged.

    lm = ReftLM(adapter="out/run", device="cpu", batch_size=8)
    lm_eval --model reft --model_args adapter=out/run,dtype=bfloat16 ...  (see __main__.py)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import simple_parse_args_string
from torch import Tensor

from reft_cli.engine.loading import LoadedModel, Placement, load_adapters, load_base
from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError
from reft_cli.evaluation.harness.context_lengths import ContextLengths

__all__ = ["ReftLM", "load_subject"]

LM_EVAL_DEFAULT_DEVICE = "cuda:0"


def load_subject(
    adapter: str | Path | None, pretrained: str | None, device: str, dtype: str | None
) -> LoadedModel:
    """The adapter (ReFT or LoRA) on its base model or `pretrained`, or `pretrained` alone."""
    placement = Placement(device=device, dtype=None if dtype in (None, "auto") else dtype)
    if adapter:
        subject = load_adapters(
            {"default": Path(adapter)}, base_model=pretrained, placement=placement
        )
    elif pretrained:
        subject = load_base(pretrained, placement=placement)
    else:
        raise ReftError(
            "--model reft needs adapter=DIR (a ReFT or LoRA folder) or pretrained=MODEL"
        )
    if subject.task_type != "causal_lm":
        raise ReftError(
            f"{adapter} is a classification adapter; lm-eval scores language models (causal_lm)"
        )
    return subject


@register_model("reft")
class ReftLM(HFLM):
    """HFLM over a reft-loaded model; model_args: adapter, pretrained, device, dtype, and HFLM's."""

    def __init__(
        self,
        adapter: str | None = None,
        pretrained: str | None = None,
        device: str | None = "auto",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        if trust_remote_code:
            raise ReftError("--model reft never runs a model's remote code (trust_remote_code)")
        if device == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
            device = "auto"  # lm-eval's CLI passes cuda:0 unless told; HFLM falls back likewise
        self.subject = load_subject(adapter, pretrained, device or "auto", dtype)
        self._context_lengths: ContextLengths | None = None
        self._probing = False
        super().__init__(
            pretrained=self.subject.base_model, tokenizer=self.subject.tokenizer, **kwargs
        )

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> ReftLM:
        """model_args win over the command line's settings, so `device=` may be given in either."""
        given = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**given, **arg_dict})

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> ReftLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @property
    def _reft(self) -> ReftModel | None:
        model = self.subject.model
        return model if isinstance(model, ReftModel) else None

    # ----------------------------------------------------------------- log-likelihood
    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):  # type: ignore[no-untyped-def]
        """HFLM's batching, with each request's input recorded so rows find their context."""
        if self._reft is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        self._context_lengths = ContextLengths(requests, self.max_length)
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        finally:
            self._context_lengths = None

    def _detect_batch_size(self, requests=None, pos: int = 0):  # type: ignore[no-untyped-def]
        """`batch_size=auto` probes with made-up rows; they are all prompt."""
        self._probing = True
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._probing = False

    def _model_call(
        self, inps: Tensor, attn_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Logits of a right-padded batch, each row edited at its context's positions."""
        reft = self._reft
        if reft is None:
            return super()._model_call(inps, attn_mask, labels)
        if self._context_lengths is None or self._probing:
            lengths = torch.full((inps.shape[0],), inps.shape[1])
            contexts = lengths
        else:
            lengths, contexts = self._context_lengths.rows(inps)
        mask = torch.arange(inps.shape[1])[None] < lengths[:, None]
        device = inps.device
        with torch.no_grad(), self._autocast():
            out = reft(inps, mask.long().to(device), prompt_lengths=contexts.to(device))
        return out.logits

    # ----------------------------------------------------------------- generation
    def _model_generate(self, context: Tensor, max_length: int, stop: list[str], **kwargs: Any):  # type: ignore[no-untyped-def]
        """HFLM's generate on the base model, with the prompt edited on the prefill pass."""
        reft = self._reft
        if reft is None:
            return super()._model_generate(context, max_length, stop, **kwargs)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(context)
        with reft.prompt_edits(mask):
            return super()._model_generate(context, max_length, stop, **kwargs)

    @contextmanager
    def _autocast(self) -> Iterator[None]:
        """HFLM's mixed_precision_dtype, as its own model call applies it."""
        dtype = self.mixed_precision_dtype
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None):
            yield
