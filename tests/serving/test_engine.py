"""The engine in process: rows join a running batch between decode steps, and what each row
gets (tokens, samples, log-probabilities) does not depend on the rows beside it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from reft_cli.config.schema import GenerateConfig
from reft_cli.data.examples import left_padded
from reft_cli.engine.loading import Placement, load_adapters
from reft_cli.generation.server.engine import Engine, Sampling
from reft_cli.generation.server.pending import Pending
from reft_cli.generation.server.sampler import Penalties
from tests.serving.conftest import MAX_TOKENS, PROMPTS

GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def loaded(models):
    return load_adapters(
        {"emoji": models["emoji"], "math": models["math"]}, placement=Placement(device="cpu")
    )


def generate(loaded, prompt: str, adapter: str, max_tokens: int) -> list[int]:
    """`reft generate`'s greedy tokens for one row: transformers' generate, end-of-text cut."""
    ids = loaded.tokenizer(prompt)["input_ids"]
    batch = left_padded([ids], loaded.tokenizer.pad_token_id)
    settings = GenerateConfig(max_new_tokens=max_tokens).kwargs(loaded.tokenizer.pad_token_id)
    out = loaded.generate(batch["input_ids"], batch["attention_mask"], [adapter], **settings)
    tokens = out[0, len(ids) :].tolist()
    eos = loaded.tokenizer.eos_token_id
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def pending(loaded, prompt, adapter, max_tokens, sampling=GREEDY, n=1, stream=False, logprobs=-1):
    ids = loaded.tokenizer(prompt)["input_ids"]
    return Pending(
        loaded.tokenizer, [ids], adapter, [max_tokens], sampling, n, [], stream, logprobs
    )


def serve(loaded, body, max_batch_size: int = 8, **options):
    """Run `body(engine)` on an event loop with a started engine, then close it."""

    async def main():
        engine = Engine(loaded, max_batch_size, **options)
        engine.start(asyncio.get_running_loop())
        try:
            return await body(engine)
        finally:
            engine.close()

    return asyncio.run(main())


def test_a_request_joins_a_long_one_midway_and_finishes_first_with_its_own_answer(loaded):
    long_prompt, long_tokens = PROMPTS[3], 200

    async def body(engine):
        alone = pending(loaded, long_prompt, "emoji", long_tokens)
        engine.submit(alone.rows)
        solo = (await alone.result())[0]
        short_alone = pending(loaded, "Hello", "math", MAX_TOKENS, logprobs=0)
        engine.submit(short_alone.rows)
        short_solo = (await short_alone.result())[0]
        long = pending(loaded, long_prompt, "emoji", long_tokens, stream=True)
        engine.submit(long.rows)
        deltas = long.deltas()
        await deltas.__anext__()  # the long row is decoding
        short = pending(loaded, "Hello", "math", MAX_TOKENS, logprobs=0)
        engine.submit(short.rows)
        answer = (await short.result())[0]
        short_done = time.monotonic()
        async for _ in deltas:
            pass
        found = (long.choices[0], answer, short, short_done, time.monotonic())
        return solo, short_solo, *found, engine

    solo, short_solo, joined, answer, short, short_done, long_done, engine = serve(loaded, body)
    assert solo.finish == "length" and solo.count == long_tokens  # long enough to overlap
    assert joined.tokens == solo.tokens  # joining changed nothing for the long row
    assert answer.tokens == generate(loaded, "Hello", "math", MAX_TOKENS)
    # The joined row's own positions: its scores are the ones it gets alone, to float error.
    alone = torch.tensor([e.logprob for e in short_solo.logprobs])
    joined_scores = torch.tensor([e.logprob for e in answer.logprobs])
    assert torch.allclose(joined_scores, alone, atol=1e-4)
    assert short.first_token_at < short_done < long_done
    assert max(engine.batch_sizes) == 2  # the two rows decoded together


def test_mixed_adapters_and_lengths_in_one_batch_equal_generate_row_by_row(loaded):
    cases = [
        (p, a, 1 + i)
        for i, (p, a) in enumerate(zip(PROMPTS, ["emoji", "math", "base"] * 2, strict=True))
    ]

    async def body(engine):
        pendings = [pending(loaded, p, a, m) for p, a, m in cases]
        for item in pendings:
            engine.submit(item.rows)
        return [(await item.result())[0] for item in pendings], engine

    answers, engine = serve(loaded, body)
    for (prompt, adapter, max_tokens), choice in zip(cases, answers, strict=True):
        assert choice.tokens == generate(loaded, prompt, adapter, max_tokens), (prompt, adapter)
    assert max(engine.batch_sizes) > 1


@pytest.mark.parametrize("budget_rows", [2, 0])
def test_a_prefill_stays_within_its_token_budget_and_a_longer_prompt_runs_alone(
    loaded, budget_rows
):
    cases = [(PROMPTS[3], a) for a in ("emoji", "math", "base", "emoji")]  # equal lengths
    length = len(loaded.tokenizer(PROMPTS[3])["input_ids"])
    budget = max(budget_rows * length, 1)  # two rows fit, three do not; or not even one

    async def body(engine):
        pendings = [pending(loaded, p, a, MAX_TOKENS) for p, a in cases]
        engine.submit([row for item in pendings for row in item.rows])  # all waiting at once
        return [(await item.result())[0] for item in pendings], engine

    answers, engine = serve(loaded, body, max_prefill_tokens=budget)
    for (prompt, adapter), choice in zip(cases, answers, strict=True):
        assert choice.tokens == generate(loaded, prompt, adapter, MAX_TOKENS), (prompt, adapter)
    assert engine.prefill_sizes == ({2: 2} if budget_rows == 2 else {1: 4})
    assert max(engine.batch_sizes) > 2  # later prefills still join the running batch


def test_a_seeded_row_samples_the_same_alone_or_beside_others(loaded):
    sampled = Sampling(temperature=0.9, top_p=0.8, top_k=40, seed=3)

    async def body(engine):
        alone = pending(loaded, "Hello", "emoji", 12, sampled, n=2)
        engine.submit(alone.rows)
        first = [c.tokens for c in await alone.result()]
        crowd = [pending(loaded, p, "math", 12, Sampling(temperature=1.0)) for p in PROMPTS]
        again = pending(loaded, "Hello", "emoji", 12, sampled, n=2)
        for item in [*crowd[:3], again, *crowd[3:]]:
            engine.submit(item.rows)
        return first, [c.tokens for c in await again.result()]

    first, again = serve(loaded, body)
    assert again == first
    assert first[0] != first[1]  # the choices of one seeded request differ


def test_logprobs_are_the_log_softmax_of_the_models_logits(loaded):
    prompt, adapter, k = "Who are you?", "emoji", 3

    async def body(engine):
        crowd = pending(loaded, PROMPTS[3], "math", 20)  # a batch neighbour with another adapter
        engine.submit(crowd.rows)
        item = pending(loaded, prompt, adapter, MAX_TOKENS, logprobs=k)
        engine.submit(item.rows)
        await crowd.result()
        return (await item.result())[0]

    choice = serve(loaded, body)
    ids = loaded.tokenizer(prompt)["input_ids"]
    full = torch.tensor([ids + choice.tokens])
    with torch.no_grad():
        logits = loaded.model(
            full,
            torch.ones_like(full),
            prompt_lengths=torch.tensor([len(ids)]),
            adapter_names=[adapter],
        ).logits[0, len(ids) - 1 : -1]
    logprobs = logits.float().log_softmax(dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(choice.tokens)[:, None]).squeeze(-1)
    top = logprobs.topk(k, dim=-1).values
    assert len(choice.logprobs) == len(choice.tokens) == MAX_TOKENS
    got = torch.tensor([e.logprob for e in choice.logprobs])
    assert torch.allclose(got, chosen, atol=1e-4)
    assert torch.allclose(got, top[:, 0], atol=1e-4)  # greedy: the chosen token is the likeliest
    got_top = torch.tensor([[v for _, v in e.top] for e in choice.logprobs])
    assert torch.allclose(got_top, top, atol=1e-4)
    decode = loaded.tokenizer.decode
    assert [e.token for e in choice.logprobs] == [decode([t]) for t in choice.tokens]


class _OpenAIPenalties(LogitsProcessor):
    """The OpenAI presence and frequency penalties row by row, over the tokens after the prompt:
    an independent reference for the engine's batched ones."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.start, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            for token, count in Counter(ids[self.start :]).items():
                scores[row, token] -= self.frequency * count + self.presence
        return scores


def generate_penalized(loaded, prompt, adapter, max_tokens, repetition, presence, frequency):
    """Greedy tokens from transformers' generate with its repetition penalty and the reference."""
    ids = loaded.tokenizer(prompt)["input_ids"]
    batch = left_padded([ids], loaded.tokenizer.pad_token_id)
    config = GenerateConfig(max_new_tokens=max_tokens, repetition_penalty=repetition)
    out = loaded.generate(
        batch["input_ids"],
        batch["attention_mask"],
        [adapter],
        logits_processor=LogitsProcessorList([_OpenAIPenalties(len(ids), presence, frequency)]),
        **config.kwargs(loaded.tokenizer.pad_token_id),
    )
    tokens = out[0, len(ids) :].tolist()
    eos = loaded.tokenizer.eos_token_id
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def test_penalized_rows_beside_plain_ones_equal_generate_with_the_same_penalties(loaded):
    settings = [(1.0, 0.0, 0.0), (1.8, 0.0, 0.0), (1.0, 1.5, 0.0), (1.0, 0.0, 0.3), (1.3, 0.5, 1.0)]
    cases = [
        (PROMPTS[i], adapter, s)
        for i, adapter in enumerate(["emoji", "math"] * 3)
        for s in settings
    ][:: len(settings) - 1]  # each setting on a different prompt and adapter
    cases += [(PROMPTS[0], "emoji", s) for s in settings]  # and every setting on one row
    max_tokens = 30

    async def body(engine):
        first = pending(loaded, PROMPTS[3], "math", 5)  # a plain batch that penalized rows join
        engine.submit(first.rows)
        pendings = [
            pending(loaded, p, a, max_tokens, Sampling(0.0, 1.0, 0, None, *s)) for p, a, s in cases
        ]
        for item in pendings:
            engine.submit(item.rows)
        await first.result()
        return [(await item.result())[0].tokens for item in pendings]

    answers = serve(loaded, body, max_batch_size=4)
    expected = [generate_penalized(loaded, p, a, max_tokens, *s) for p, a, s in cases]
    assert answers == expected
    plain = generate(loaded, PROMPTS[0], "emoji", max_tokens)
    assert sum(tokens != plain for tokens in answers[-len(settings) + 1 :]) >= 3  # they bite


def test_penalties_follow_transformers_and_openai_rules_on_known_logits():
    # Row 0: repetition 2 over prompt tokens {0, 1}; row 1: presence 0.5, frequency 0.25.
    ids = torch.tensor([[0, 1, 3], [3, 3, 3]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # row 0's token 3 is padding
    penalties = Penalties.of([(2.0, 0.0, 0.0), (1.0, 0.5, 0.25)], ids, mask, vocab=4)
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]])
    first = penalties.apply(logits)
    assert torch.equal(first[0], torch.tensor([1.0, -2.0, 0.5, 3.0]))
    assert torch.equal(first[1], logits[1])  # the prompt does not count for OpenAI's penalties
    penalties.record(torch.tensor([2, 1]))
    penalties.record(torch.tensor([0, 1]))
    again = penalties.apply(logits)
    assert torch.equal(again[0], torch.tensor([1.0, -2.0, 0.25, 3.0]))  # 2 is now seen too
    assert torch.equal(again[1], torch.tensor([1.0, 1.0 - 0.5 - 2 * 0.25, 1.0, 1.0]))
    both = Penalties.join(penalties.select(torch.tensor([1])), 1, None, 2)
    assert both is not None and torch.equal(both.apply(logits[[1, 0, 0]])[1:], logits[[0, 0]])
