"""Prompt templates: how one dataset row becomes a prompt text and a response text.

Interventions act on prompt tokens only, so the template decides exactly where the prompt ends.
Named templates reproduce the paper's formats (REFERENCE.md); any other template is a Python
format string whose {placeholders} name row fields.

`data.columns` maps a role (prompt, input, response, label) to a dataset column; the role name is
added to each row as an alias of that column, so templates may use either name, and a mapped role
takes priority over a template's usual field names.

    template = make_template(DataConfig(template="alpaca"))
    template.prompt({"instruction": "Add 2 and 3.", "input": "", "output": "5"})
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from reft_cli.config.schema import NAMED_TEMPLATES, DataConfig
from reft_cli.errors import ReftError

__all__ = [
    "ALPACA",
    "ALPACA_NO_INPUT",
    "GSM8K_ANSWER",
    "GSM8K_TRIGGER",
    "RESPONSE_COLUMNS",
    "PromptTemplate",
    "make_template",
    "missing_column",
]

ALPACA = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
GSM8K_TRIGGER = (
    "\nAnswer the above question. First think step by step and then answer the final number.\n"
)
GSM8K_ANSWER = "The final answer is: "
COMMONSENSE_ANSWER = "the correct answer is "

RESPONSE_COLUMNS = ("response", "output", "answer", "completion")
"""Where the response is found when data.columns does not name it: the first present wins."""

ROLES = ("prompt", "input", "response", "label")


def missing_column(names: Sequence[str], role: str, columns: Sequence[str]) -> ReftError:
    """The one-line error for a column the template needs but the dataset lacks."""
    wanted = " or ".join(repr(n) for n in names)
    return ReftError(
        f"column {wanted} not found in the dataset (its columns: {', '.join(columns)}); "
        f"set data.columns to map it, for example data.columns.{role}=<column>"
    )


class _Fields(dict):
    """A row for str.format_map: a missing placeholder is a user error naming the column."""

    def __init__(self, row: Mapping[str, Any], columns: Sequence[str]) -> None:
        super().__init__(row)
        self.columns = columns

    def __missing__(self, key: str) -> Any:
        raise missing_column([key], key if key in ROLES else "prompt", self.columns)


@dataclass(frozen=True)
class PromptTemplate:
    """Turns rows into prompt and response texts; `spec` is what the adapter records."""

    spec: str
    columns: Mapping[str, str] = field(default_factory=dict)
    system_prompt: str | None = None
    tokenizer: PreTrainedTokenizerBase | None = None  # only the chat template needs it

    @property
    def has_special_tokens(self) -> bool:
        """True when the prompt text already holds the tokenizer's special tokens (chat)."""
        return self.spec == "chat"

    def with_roles(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row plus each mapped role name as an alias of its column."""
        out = dict(row)
        for role, column in self.columns.items():
            if column not in row:
                raise missing_column([column], role, list(row))
            out[role] = row[column]
        return out

    def prompt(self, row: Mapping[str, Any]) -> str:
        """The prompt text: everything the interventions may read."""
        fields, columns = self.with_roles(row), list(row)
        if self.spec == "alpaca":
            instruction = self._get(fields, ("instruction",), "prompt", columns)
            extra = self._find(fields, ("input",), "input")
            if extra is not None and str(extra).strip():
                return ALPACA.format(instruction=instruction, input=extra)
            return ALPACA_NO_INPUT.format(instruction=instruction)
        if self.spec == "commonsense":
            return f"{self._get(fields, ('instruction',), 'prompt', columns)}\n"
        if self.spec == "gsm8k":
            return f"{self._get(fields, ('question',), 'prompt', columns)}{GSM8K_TRIGGER}"
        if self.spec == "chat":
            return self._chat(fields, columns)
        return self.spec.format_map(_Fields(fields, columns))

    def response(self, row: Mapping[str, Any]) -> str | None:
        """The response text the model learns to produce, or None when the row has none."""
        fields = self.with_roles(row)
        if self.spec == "commonsense":
            text = self._find(fields, ("output",), "response")
            if text is not None:
                return str(text)
            answer = fields.get("answer")
            return None if answer is None else f"{COMMONSENSE_ANSWER}{answer}"
        if self.spec == "gsm8k":
            answer = self._find(fields, ("answer",), "response")
            return None if answer is None else str(answer).replace("####", GSM8K_ANSWER)
        text = self._find(fields, RESPONSE_COLUMNS, "response")
        return None if text is None else str(text)

    def _chat(self, fields: Mapping[str, Any], columns: Sequence[str]) -> str:
        """The tokenizer's own chat format; an `input` field, when non-empty, follows the prompt."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ReftError(
                "data.template is chat but the tokenizer has no chat template; "
                "use alpaca or a format string such as '{prompt}'"
            )
        content = str(self._get(fields, ("instruction",), "prompt", columns))
        extra = self._find(fields, ("input",), "input")
        if extra is not None and str(extra).strip():
            content = f"{content}\n\n{extra}"
        messages = [{"role": "user", "content": content}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        # tokenize=False: transformers 5 returns a BatchEncoding otherwise; the caller tokenizes.
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as err:  # jinja errors, e.g. a template that rejects a system message
            raise ReftError(f"the tokenizer's chat template failed: {err}") from err
        return str(text)

    def _find(self, fields: Mapping[str, Any], names: Sequence[str], role: str) -> Any:
        """The first field present, looking at a mapped role before the template's usual names."""
        order = (role, *names) if role in self.columns else (*names, role)
        for name in order:
            if fields.get(name) is not None:
                return fields[name]
        return None

    def _get(
        self, fields: Mapping[str, Any], names: Sequence[str], role: str, columns: Sequence[str]
    ) -> Any:
        value = self._find(fields, names, role)
        if value is None:
            raise missing_column([*names, role], role, columns)
        return value


def make_template(
    data_cfg: DataConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> PromptTemplate:
    """The template named (or written) in data.template, with data.columns applied."""
    spec = data_cfg.template
    if spec not in NAMED_TEMPLATES:
        try:
            names = [n for _, n, _, _ in string.Formatter().parse(spec) if n is not None]
        except ValueError as err:
            raise ReftError(f"data.template {spec!r} is not a valid format string: {err}") from err
        if not names:
            raise ReftError(
                f"data.template {spec!r} names no row field; use {', '.join(NAMED_TEMPLATES)} "
                "or a format string with placeholders such as '{prompt}'"
            )
    unknown = sorted(set(data_cfg.columns) - set(ROLES))
    if unknown:
        raise ReftError(
            f"data.columns has unknown role(s) {', '.join(unknown)}; the roles are "
            f"{', '.join(ROLES)}"
        )
    return PromptTemplate(spec, dict(data_cfg.columns), data_cfg.system_prompt, tokenizer)
