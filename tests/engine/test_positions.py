"""The positions language and the per-row index tensors it produces."""

import pytest
import torch

from reft_cli.engine.positions import Positions, PositionSpec, compute_positions
from reft_cli.errors import ReftError


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [("f7+l7", 7, 7), ("f1", 1, 0), ("l1", 0, 1), ("f3+l0", 3, 0), (" f5+l2 ", 5, 2)],
)
def test_parse_accepts_the_position_language(text, first, last):
    assert PositionSpec.parse(text) == PositionSpec(first, last)


@pytest.mark.parametrize(
    "text", ["f-1", "x3", "f7+", "", "+l3", "f7l7", "l7+f7", "f0", "f0+l0", "f1.5"]
)
def test_parse_rejects_anything_else_with_a_clear_error(text):
    with pytest.raises(ReftError, match="positions"):
        PositionSpec.parse(text)


def test_groups_tied_and_untied():
    spec = PositionSpec.parse("f3+l2")
    assert spec.groups(share_weights=True) == ("all",)
    assert spec.groups(share_weights=False) == ("first", "last")
    assert PositionSpec.parse("l1").groups(share_weights=False) == ("last",)


def rows(index: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [
        [int(i) for i, m in zip(r, k, strict=True) if m] for r, k in zip(index, mask, strict=True)
    ]


def test_tied_positions_for_right_padded_rows():
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    got = compute_positions(PositionSpec(2, 2), True, torch.tensor([8, 5]), mask)["all"]
    assert rows(got.index, got.mask) == [[0, 1, 6, 7], [0, 1, 3, 4]]


def test_left_padding_shifts_positions_by_the_pad_count():
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    got = compute_positions(PositionSpec(2, 2), True, torch.tensor([8, 5]), mask)["all"]
    assert rows(got.index, got.mask) == [[0, 1, 6, 7], [4, 5, 7, 8]]


def test_each_side_is_capped_at_half_the_prompt():
    mask = torch.ones(3, 12, dtype=torch.long)
    got = compute_positions(PositionSpec(3, 3), False, torch.tensor([5, 2, 1]), mask)
    # L=5 → ⌊5/2⌋ = 2 per side; L=2 → 1; L=1 → 0: the sides never overlap.
    assert rows(got["first"].index, got["first"].mask) == [[0, 1], [0], []]
    assert rows(got["last"].index, got["last"].mask) == [[3, 4], [1], []]
    assert got["first"].index.shape == (3, 3)


def test_untied_returns_only_non_empty_sides():
    mask = torch.ones(1, 8, dtype=torch.long)
    got = compute_positions(PositionSpec(3, 0), False, torch.tensor([8]), mask)
    assert list(got) == ["first"]
    assert rows(got["first"].index, got["first"].mask) == [[0, 1, 2]]


def test_prompt_length_beyond_attended_tokens_is_an_error():
    mask = torch.tensor([[1, 1, 1, 0]])
    with pytest.raises(ReftError, match="prompt length"):
        compute_positions(PositionSpec(1, 1), True, torch.tensor([4]), mask)


def test_explicit_positions_mask_negative_slots():
    got = Positions.from_explicit(torch.tensor([[3, -1], [0, 2]]))
    assert got.mask.tolist() == [[True, False], [True, True]]
    assert int(got.index.min()) >= 0


def test_expand_repeats_each_row_in_place():
    got = Positions.from_explicit(torch.tensor([[1], [2]])).expand(2)
    assert got.index.tolist() == [[1], [1], [2], [2]]


def test_expand_repeats_the_mask_with_the_index():
    got = Positions.from_explicit(torch.tensor([[1, -1], [2, 0]])).expand(3)
    assert got.mask.tolist() == [[True, False]] * 3 + [[True, True]] * 3
    assert got.index.dtype == torch.long


def test_explicit_positions_are_long_rows_with_masked_slots_at_zero():
    one_row = Positions.from_explicit(torch.tensor([0, -1, 4], dtype=torch.int32))
    assert one_row.index.dtype == torch.long and one_row.index.shape == (1, 3)
    assert one_row.index.tolist() == [[0, 0, 4]]  # a real 0 stays 0; the unused slot points at 0
    assert one_row.mask.tolist() == [[True, False, True]]
