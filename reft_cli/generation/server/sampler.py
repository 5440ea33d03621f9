"""Next tokens for a batch whose rows each have their own temperature, top-k, top-p and seed.

Greedy rows take the arg-max. Sampled rows apply temperature, then top-k, then top-p (transformers'
order, so a row samples from the distribution `generate` would) and draw by an exponential race:
arg-max of p / E with E ~ Exp(1) picks token i with probability p_i. Each row's noise comes from its
own generator when it has a seed, so its draws depend on its seed alone, not on the rows beside it.
Penalties come first, as in transformers and vLLM: the repetition penalty divides a positive logit
(multiplies a negative one) of every token in the prompt or the answer so far, then the OpenAI
presence and frequency penalties subtract from the tokens of the answer so far.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Draws:
    """The sampled rows' settings, as tensors over those rows (`rows`: their batch indices)."""

    rows: Tensor  # (S,) long
    temperature: Tensor  # (S,) float, above 0
    top_p: Tensor  # (S,) float
    top_k: Tensor  # (S,) long, 0: no top-k
    generators: list[torch.Generator | None]  # one per sampled row

    @classmethod
    def of(
        cls,
        settings: list[tuple[float, float, int, torch.Generator | None]],
        device: torch.device,
    ) -> Draws:
        """From (temperature, top_p, top_k, generator) per row; temperature 0 rows are greedy."""
        picked = [(i, s) for i, s in enumerate(settings) if s[0] > 0]
        return cls(
            torch.tensor([i for i, _ in picked], dtype=torch.long, device=device),
            torch.tensor([s[0] for _, s in picked], dtype=torch.float32, device=device),
            torch.tensor([s[1] for _, s in picked], dtype=torch.float32, device=device),
            torch.tensor([s[2] for _, s in picked], dtype=torch.long, device=device),
            [s[3] for _, s in picked],
        )


@dataclass
class Penalties:
    """Per-row penalty settings and the token statistics they read, for a batch's rows (a batch
    where no row has a penalty carries none, and pays nothing)."""

    repetition: Tensor  # (B,) float, 1: none
    presence: Tensor  # (B,) float
    frequency: Tensor  # (B,) float
    seen: Tensor  # (B, V) bool: in the prompt or the answer so far
    counts: Tensor  # (B, V) float: times in the answer so far

    @classmethod
    def of(
        cls, settings: list[tuple[float, float, float]], ids: Tensor, mask: Tensor, vocab: int
    ) -> Penalties:
        """From (repetition, presence, frequency) per row and the rows' padded prompts."""
        values = torch.tensor(settings, dtype=torch.float32, device=ids.device)
        in_prompt = torch.zeros(len(settings), vocab, device=ids.device)
        in_prompt.scatter_add_(1, ids, mask.to(in_prompt.dtype))
        counts = torch.zeros_like(in_prompt)
        return cls(values[:, 0], values[:, 1], values[:, 2], in_prompt > 0, counts)

    def apply(self, logits: Tensor) -> Tensor:
        """(B, V) logits with each row's penalties applied."""
        repetition = self.repetition[:, None]
        damped = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(self.seen, damped, logits)
        used = (self.counts > 0).to(logits.dtype)
        return logits - self.frequency[:, None] * self.counts - self.presence[:, None] * used

    def record(self, tokens: Tensor) -> None:
        """Count each row's newly chosen token."""
        rows = torch.arange(len(tokens), device=tokens.device)
        self.counts[rows, tokens] += 1
        self.seen[rows, tokens] = True

    def select(self, index: Tensor) -> Penalties:
        return Penalties(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def join(
        first: Penalties | None, size: int, second: Penalties | None, other: int
    ) -> Penalties | None:
        """Two batches' penalties (`size` and `other` rows) as one; a side without any gets
        neutral rows. None when neither side has penalties."""
        known = first or second
        if known is None:
            return None
        vocab, device = known.seen.shape[1], known.seen.device
        first = first or Penalties.neutral(size, vocab, device)
        second = second or Penalties.neutral(other, vocab, device)
        return Penalties(
            *(torch.cat([getattr(first, f.name), getattr(second, f.name)]) for f in fields(first))
        )

    @staticmethod
    def neutral(size: int, vocab: int, device: torch.device) -> Penalties:
        ids = torch.zeros(size, 1, dtype=torch.long, device=device)
        return Penalties.of([(1.0, 0.0, 0.0)] * size, ids, torch.zeros_like(ids), vocab)


def next_tokens(logits: Tensor, draws: Draws) -> Tensor:
    """(B, V) float logits → (B,) tokens: arg-max, with the sampled rows drawn."""
    tokens = logits.argmax(dim=-1)
    if draws.rows.numel():
        tokens[draws.rows] = _sample(logits[draws.rows], draws)
    return tokens


def _sample(logits: Tensor, draws: Draws) -> Tensor:
    scaled = logits / draws.temperature[:, None]
    ordered, order = scaled.sort(dim=-1, descending=True)
    vocab = ordered.shape[-1]
    rank = torch.arange(vocab, device=logits.device)[None]
    top_k = torch.where(draws.top_k > 0, draws.top_k, vocab)[:, None]
    ordered = ordered.masked_fill(rank >= top_k, float("-inf"))
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the likelier tokens
    keep = (before < draws.top_p[:, None]) | (rank == 0)
    probs = probs * keep
    noise = torch.empty_like(probs).exponential_()
    for i, generator in enumerate(draws.generators):
        if generator is not None:  # a seeded row draws its own noise
            noise[i] = torch.empty(vocab, device=logits.device).exponential_(generator=generator)
    choice = (probs / noise).argmax(dim=-1, keepdim=True)
    return order.gather(-1, choice).squeeze(-1)


def top_logprobs(logits: Tensor, tokens: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The chosen tokens' log-probabilities and the k likeliest (values, ids), from raw logits."""
    logprobs = logits.log_softmax(dim=-1)
    chosen = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    values, ids = logprobs.topk(max(k, 1), dim=-1)
    return chosen, values, ids
