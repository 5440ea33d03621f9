"""Prompt templates: each named format's exact text, format strings, and data.columns mapping."""

import pytest

from reft_cli.config.schema import DataConfig
from reft_cli.data.templates import make_template
from reft_cli.errors import ReftError
from tests.conftest import needs_smollm2


def template(spec="{prompt}", tokenizer=None, **data):
    return make_template(DataConfig(template=spec, **data), tokenizer)


ALPACA_ROW = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}


def test_alpaca_with_input_is_the_stanford_prompt():
    assert template("alpaca").prompt(ALPACA_ROW) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
    )


def test_alpaca_with_empty_input_is_the_no_input_prompt():
    row = {**ALPACA_ROW, "input": ""}
    assert template("alpaca").prompt(row) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Response:\n"
    )


def test_alpaca_without_an_input_column_is_the_no_input_prompt():
    row = {"instruction": "Say hi.", "output": "hi"}
    assert template("alpaca").prompt(row).endswith("### Instruction:\nSay hi.\n\n### Response:\n")
    assert "### Input" not in template("alpaca").prompt(row)


def test_alpaca_response_is_the_output():
    assert template("alpaca").response(ALPACA_ROW) == "5"


def test_commonsense_prompt_is_the_instruction_and_a_newline():
    row = {"instruction": "Is the sky blue?", "output": "the correct answer is true"}
    assert template("commonsense").prompt(row) == "Is the sky blue?\n"
    assert template("commonsense").response(row) == "the correct answer is true"


def test_commonsense_response_falls_back_to_the_answer():
    row = {"instruction": "Pick one.", "answer": "solution2"}
    assert template("commonsense").response(row) == "the correct answer is solution2"


def test_gsm8k_prompt_and_final_answer():
    row = {"question": "What is 6 times 7?", "answer": "6 * 7 = <<6*7=42>>42\n#### 42"}
    assert template("gsm8k").prompt(row) == (
        "What is 6 times 7?\nAnswer the above question. First think step by step and then "
        "answer the final number.\n"
    )
    assert template("gsm8k").response(row) == "6 * 7 = <<6*7=42>>42\nThe final answer is:  42"


def test_format_string_fills_placeholders_from_row_fields():
    row = {"question": "Why?", "context": "Because.", "answer": "ok"}
    assert template("Q: {question}\nC: {context}\nA:").prompt(row) == "Q: Why?\nC: Because.\nA:"


def test_format_string_renders_non_text_fields():
    assert template("{a} + {b} =").prompt({"a": 2, "b": 3, "output": "5"}) == "2 + 3 ="


def test_default_response_column_is_the_first_of_response_output_answer_completion():
    assert template().response({"prompt": "p", "answer": "a", "output": "o"}) == "o"
    assert template().response({"prompt": "p", "completion": "c"}) == "c"
    assert template().response({"prompt": "p", "completion": "c", "response": "r"}) == "r"


def test_response_is_none_when_no_response_column_exists():
    assert template().response({"prompt": "p"}) is None


def test_mapped_columns_become_role_aliases():
    t = template(columns={"prompt": "query", "response": "reply"})
    row = {"query": "Hello?", "reply": "Hi.", "output": "not this"}
    assert t.prompt(row) == "Hello?"
    assert t.response(row) == "Hi."


def test_format_string_may_use_the_column_or_its_role():
    t = template("{prompt} / {query}", columns={"prompt": "query"})
    assert t.prompt({"query": "x"}) == "x / x"


def test_a_mapped_prompt_wins_over_the_templates_usual_field():
    t = template("alpaca", columns={"prompt": "task"})
    row = {"instruction": "ignored", "task": "Do this.", "output": "done"}
    assert "### Instruction:\nDo this.\n\n" in t.prompt(row)


def test_named_template_reads_a_mapped_input():
    t = template("alpaca", columns={"input": "context"})
    row = {"instruction": "Summarize.", "context": "Long text.", "output": "Short."}
    assert "### Input:\nLong text.\n\n### Response:\n" in t.prompt(row)


def test_missing_placeholder_names_it_and_lists_the_columns():
    with pytest.raises(ReftError) as err:
        template("{question}").prompt({"text": "a", "label": 1})
    message = str(err.value)
    assert "'question'" in message and "text, label" in message and "data.columns" in message
    assert "\n" not in message


def test_missing_mapped_column_names_it_and_lists_the_columns():
    t = template(columns={"prompt": "query"})
    with pytest.raises(
        ReftError, match=r"'query' not found .*columns: prompt, output.*data\.columns"
    ):
        t.prompt({"prompt": "p", "output": "o"})


def test_named_template_missing_its_field_says_to_map_the_prompt():
    with pytest.raises(ReftError, match=r"'question' or 'prompt'.*columns: text.*columns\.prompt"):
        template("gsm8k").prompt({"text": "t"})


def test_unknown_role_in_columns_is_an_error():
    with pytest.raises(ReftError, match="unknown role"):
        template(columns={"answer_text": "a"})


def test_format_string_without_placeholders_is_an_error():
    with pytest.raises(ReftError, match="names no row field"):
        template("just text")


def test_spec_is_the_name_or_the_format_string():
    assert template("alpaca").spec == "alpaca"
    assert template("{question}\n").spec == "{question}\n"


def test_only_chat_prompts_hold_special_tokens():
    assert template("chat").has_special_tokens
    assert not any(template(s).has_special_tokens for s in ("alpaca", "gsm8k", "{prompt}"))


def test_chat_without_a_chat_template_is_an_error():
    with pytest.raises(ReftError, match="no chat template"):
        template("chat").prompt({"prompt": "hi"})


@pytest.fixture(scope="module")
def smollm2():
    from reft_cli.engine.base_models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@needs_smollm2
def test_chat_uses_the_tokenizers_chat_template(smollm2):
    prompt = template("chat", smollm2).prompt({"prompt": "What is 2+2?", "response": "4"})
    expected = smollm2.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == expected
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


@needs_smollm2
def test_chat_system_prompt_comes_first(smollm2):
    t = template("chat", smollm2, system_prompt="Answer with emojis.")
    assert t.prompt({"prompt": "Hi"}).startswith(
        "<|im_start|>system\nAnswer with emojis.<|im_end|>\n<|im_start|>user\nHi<|im_end|>"
    )
