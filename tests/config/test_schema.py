"""The YAML training config: schema, defaults, overrides, and problems reported together."""

import pytest
from rich.console import Console
from rich.panel import Panel

from reft_cli.config.reader import load_config
from reft_cli.config.schema import ConfigError, RunConfig, render_problems
from reft_cli.engine.adapter_config import InterventionConfig
from reft_cli.errors import ReftError


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(tmp_path, text: str, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), list(overrides))
    return err.value.problems


GOOD = """
model:
  name_or_path: meta-llama/Llama-2-7b-hf
  dtype: bfloat16
data:
  dataset: data/train.jsonl
  columns: {prompt: instruction, response: output}
  template: alpaca
  val_size: 0.1
intervention:
  type: noreft
  layers: "2;10;18;26"
  rank: 8
  positions: f7+l7
  share_weights: false
train:
  learning_rate: 1e-3
  num_train_epochs: 6
  per_device_train_batch_size: 16
  lr_scheduler_type: cosine
eval:
  tasks: [boolq, piqa]
"""


def test_load_config_reads_every_section_of_a_good_file(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), [])
    assert cfg.model.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert cfg.model.dtype == "bfloat16"
    assert cfg.data.columns == {"prompt": "instruction", "response": "output"}
    assert cfg.data.val_size == 0.1
    assert cfg.intervention.type == "noreft"
    assert cfg.intervention.layers == "2;10;18;26"
    assert cfg.intervention.share_weights is False
    assert cfg.train.per_device_train_batch_size == 16
    assert cfg.train.lr_scheduler_type == "cosine"
    assert cfg.eval.tasks == ["boolq", "piqa"]


def test_numbers_yaml_reads_as_strings_are_accepted_for_float_fields(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), [])
    assert cfg.train.learning_rate == 1e-3
    assert isinstance(cfg.train.learning_rate, float)
    assert isinstance(cfg.train.num_train_epochs, float)


def test_an_empty_file_gives_the_paper_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""), [])
    assert cfg == RunConfig()
    assert cfg.model.name_or_path == "smollm2-135m-instruct"
    assert cfg.model.trust_remote_code is False
    assert cfg.intervention.type == "loreft"
    assert cfg.data.template == "{prompt}"
    assert cfg.data.max_length == 512
    assert cfg.train.learning_rate == 9e-4
    assert cfg.train.warmup_ratio == 0.0
    assert cfg.train.weight_decay == 0.0
    assert cfg.train.lr_scheduler_type == "linear"
    assert cfg.train.per_device_train_batch_size == 8
    assert cfg.train.max_steps == -1


def test_dotted_overrides_set_values_parsed_as_yaml(tmp_path):
    cfg = load_config(
        write(tmp_path, GOOD),
        [
            "train.learning_rate=2e-4",
            "intervention.layers=[2, 4]",
            "train.bf16=true",
            "data.columns.prompt=question",
            "model.revision=null",
        ],
    )
    assert cfg.train.learning_rate == 2e-4
    assert cfg.intervention.layers == [2, 4]
    assert cfg.train.bf16 is True
    assert cfg.data.columns == {"prompt": "question", "response": "output"}
    assert cfg.model.revision is None


def test_later_overrides_win(tmp_path):
    cfg = load_config(write(tmp_path, ""), ["train.seed=1", "train.seed=7"])
    assert cfg.train.seed == 7


def test_overrides_apply_without_a_file():
    assert load_config(None, ["intervention.rank=2"]).intervention.rank == 2


def test_an_override_without_equals_sign_is_a_problem(tmp_path):
    problems = problems_of(tmp_path, "", ["train.learning_rate"])
    assert problems == [
        "override 'train.learning_rate': expected key=value, for example train.learning_rate=1e-3"
    ]


def test_an_override_of_an_unknown_path_suggests_the_right_one(tmp_path):
    problems = problems_of(tmp_path, "", ["train.learning_rat=1e-3"])
    assert problems == [
        "override 'train.learning_rat=1e-3': train.learning_rat: unknown key; "
        "did you mean train.learning_rate?"
    ]


def test_an_override_below_a_single_value_is_a_problem(tmp_path):
    problems = problems_of(tmp_path, "", ["train.seed.x=1"])
    assert problems == ["override 'train.seed.x=1': train.seed has no setting 'x'"]


def test_a_misspelled_section_suggests_the_section(tmp_path):
    problems = problems_of(tmp_path, "trian:\n  seed: 1\n")
    assert problems == ["trian: unknown key; did you mean train?"]


def test_a_misspelled_key_in_a_section_names_its_full_path(tmp_path):
    problems = problems_of(tmp_path, "train:\n  learning_rat: 1e-3\n")
    assert problems == ["train.learning_rat: unknown key; did you mean train.learning_rate?"]


def test_every_problem_is_reported_together(tmp_path):
    text = "train:\n  learning_rat: 1\n  seed: x\nintervention:\n  rank: 0\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text, "x.yaml"), [])
    assert len(err.value.problems) == 3
    summary = str(err.value)
    assert summary.startswith(f"3 problems in {tmp_path / 'x.yaml'}: ")
    assert "\n" not in summary
    assert all(problem in summary for problem in err.value.problems)


def test_a_negative_learning_rate_names_key_value_and_expectation(tmp_path):
    problems = problems_of(tmp_path, "train:\n  learning_rate: -0.1\n")
    assert problems == ["train.learning_rate: -0.1 is not allowed; expected a positive number"]


def test_a_bad_positions_string_is_rejected(tmp_path):
    problems = problems_of(tmp_path, "intervention:\n  positions: x3\n")
    assert len(problems) == 1
    assert problems[0].startswith("intervention.positions: 'x3' is not allowed; expected f<N>")


def test_an_unknown_intervention_type_lists_the_registered_ones(tmp_path):
    problems = problems_of(tmp_path, "intervention:\n  type: loreftt\n")
    assert len(problems) == 1
    assert problems[0].startswith("intervention.type: 'loreftt' is not allowed; expected one of ")
    assert "noreft" in problems[0]
    assert problems[0].endswith("did you mean loreft?")


def test_a_bool_is_not_accepted_where_an_integer_is_expected(tmp_path):
    problems = problems_of(tmp_path, "intervention:\n  rank: true\n")
    assert problems == ["intervention.rank: true is not allowed; expected an integer"]


def test_bf16_and_fp16_together_is_a_problem(tmp_path):
    problems = problems_of(tmp_path, "train:\n  bf16: true\n  fp16: true\n")
    assert len(problems) == 1
    assert "train.bf16" in problems[0]
    assert "train.fp16" in problems[0]


@pytest.mark.parametrize("layers", ["all", 3, [0, 2], "2;10", "2,10"])
def test_layers_accept_all_an_int_a_list_or_a_string(layers):
    cfg = RunConfig.from_dict({"intervention": {"layers": layers}})
    assert cfg.intervention.layers == layers


@pytest.mark.parametrize("layers", ["'2;x'", "[]", "-1", "[1, true]", "some"])
def test_layers_reject_anything_else(tmp_path, layers):
    problems = problems_of(tmp_path, f"intervention:\n  layers: {layers}\n")
    assert len(problems) == 1
    assert problems[0].startswith("intervention.layers: ")


@pytest.mark.parametrize(("val_size", "ok"), [(0.1, True), (100, True), (1.5, False), (0, False)])
def test_val_size_is_a_fraction_or_a_row_count(tmp_path, val_size, ok):
    text = f"data:\n  val_size: {val_size}\n"
    if ok:
        assert load_config(write(tmp_path, text), []).data.val_size == val_size
    else:
        assert problems_of(tmp_path, text)[0].startswith("data.val_size: ")


@pytest.mark.parametrize(
    ("template", "ok"),
    [("alpaca", True), ("Q: {input}\nA:", True), ("no placeholder", False), ("{prompt", False)],
)
def test_template_is_a_named_format_or_has_placeholders(template, ok):
    data = {"data": {"template": template}}
    if ok:
        assert RunConfig.from_dict(data).data.template == template
    else:
        with pytest.raises(ConfigError, match=r"data\.template"):
            RunConfig.from_dict(data)


def test_a_section_that_is_not_a_mapping_is_a_problem(tmp_path):
    problems = problems_of(tmp_path, "train: 5\n")
    assert problems == ["train: 5 is not allowed; expected a mapping of settings"]


def test_a_missing_file_is_a_reft_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ReftError, match=r"nope\.yaml not found") as err:
        load_config(missing, [])
    assert "\n" not in str(err.value)


def test_invalid_yaml_is_a_one_line_reft_error_with_its_location(tmp_path):
    path = write(tmp_path, "train:\n  seed: [1, 2\n")
    with pytest.raises(ReftError, match="is not valid YAML at line") as err:
        load_config(path, [])
    assert "\n" not in str(err.value)


def test_a_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["intervention.layers=[2, 4]", "train.seed=3"])
    again = load_config(write(tmp_path, cfg.dump_yaml(), "resolved.yaml"), [])
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_reft_config_builds_one_intervention_per_layer():
    cfg = load_config(
        None, ["intervention.layers=2;5", "intervention.rank=8", "data.template=gsm8k"]
    )
    reft = cfg.reft_config(num_layers=6)
    assert reft.interventions == [
        InterventionConfig(layer=2, type="loreft", rank=8),
        InterventionConfig(layer=5, type="loreft", rank=8),
    ]
    assert reft.positions == "f7+l7"
    assert reft.base_model == "smollm2-135m-instruct"
    assert reft.prompt_template == "gsm8k"
    assert reft.num_layers == 6


def test_reft_config_all_layers_covers_the_model():
    reft = RunConfig().reft_config(num_layers=4)
    assert [iv.layer for iv in reft.interventions] == [0, 1, 2, 3]


def test_reft_config_rejects_a_layer_the_model_lacks():
    cfg = load_config(None, ["intervention.layers=[9]"])
    with pytest.raises(ReftError, match=r"intervention\.layers: layer 9 is out of range"):
        cfg.reft_config(num_layers=4)


def test_render_problems_lists_every_problem_in_one_panel():
    err = ConfigError(["a.b: unknown key", "c.d: [1] is not allowed"], "x.yaml")
    panel = render_problems(err)
    assert isinstance(panel, Panel)
    console = Console(width=100, record=True)
    console.print(panel)
    shown = console.export_text()
    assert "2 problems in x.yaml" in shown
    assert "• a.b: unknown key" in shown
    assert "• c.d: [1] is not allowed" in shown


def test_readme_documents_every_config_key():
    import dataclasses
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for section in dataclasses.fields(RunConfig):
        if section.default_factory is dataclasses.MISSING:  # a top-level key, like `method`
            assert f"`{section.name}`" in readme, section.name
            continue
        for key in dataclasses.fields(section.default_factory):
            name = f"{section.name}.{key.name}"
            assert f"`{name}`" in readme or f"`{section.name}.*`" in readme, name
