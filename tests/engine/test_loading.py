"""The one loader: devices, dtypes and device maps honoured; old folders still load."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reft_cli import ReftConfig, get_reft_model
from reft_cli.engine import loading
from reft_cli.engine.base_models import load_model
from reft_cli.engine.loading import LoadedModel, Placement, load_adapters, load_base, resolve_device
from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError
from tests.cli.test_cli import reft
from tests.conftest import tiny_model_dir

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("base") / "llama")


@pytest.fixture
def adapter_dir(base_dir, tmp_path):
    config = ReftConfig.for_layers([0, 2], 3, rank=2, base_model=str(base_dir))
    get_reft_model(load_model(str(base_dir)), config).save_pretrained(tmp_path / "a")
    return tmp_path / "a"


def _places(loaded: LoadedModel) -> set[str]:
    tensors = [*loaded.model.parameters(), *loaded.model.buffers()]
    return {t.device.type for t in tensors}


def test_every_parameter_and_buffer_goes_to_the_chosen_device(adapter_dir):
    """The meta device stands in for a GPU here: anything left on the CPU would show."""
    loaded = load_adapters({"a": adapter_dir}, placement=Placement(device=torch.device("meta")))
    assert _places(loaded) == {"meta"}
    assert loaded.device.type == "meta"


def test_auto_means_the_accelerator_when_there_is_one(adapter_dir, monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")  # this machine has none
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    moved = []
    monkeypatch.setattr(loading, "resolve_device", lambda name: moved.append(name) or "meta")
    loaded = load_adapters({"a": adapter_dir})
    assert moved == ["auto"] and _places(loaded) == {"meta"}


def test_the_base_model_alone_is_placed_too(base_dir):
    loaded = load_base(str(base_dir), placement=Placement(device=torch.device("meta")))
    assert _places(loaded) == {"meta"} and not loaded.has_adapter


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "no CUDA GPU"),
        ("cuda:1", "no CUDA GPU"),
        ("tpu", "unknown device 'tpu'"),
        ("gpu0", "unknown device"),
    ],
)
def test_unusable_devices_are_one_line_errors(name, message):
    with pytest.raises(ReftError, match=message):
        resolve_device(name)


def test_a_cuda_index_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ReftError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_dtype_is_honoured_and_interventions_stay_fp32(adapter_dir):
    loaded = load_adapters({"a": adapter_dir}, placement=Placement(device="cpu", dtype="bfloat16"))
    assert {p.dtype for p in loaded.base_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.model.adapters.parameters()} == {torch.float32}


def test_a_device_map_reaches_from_pretrained_and_the_model_is_not_moved(adapter_dir, monkeypatch):
    seen = {}
    real = loading.load_model

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **{k: v for k, v in kwargs.items() if k != "device_map"})

    monkeypatch.setattr(loading, "load_model", spy)
    monkeypatch.setattr(loading, "resolve_device", lambda name: pytest.fail("moved"))
    loaded = load_adapters({"a": adapter_dir}, placement=Placement(device_map="auto"))
    assert seen["device_map"] == "auto" and _places(loaded) == {"cpu"}


def test_interventions_are_built_on_their_layers_devices(base_dir):
    base = load_model(str(base_dir))
    base.model.layers[2].to("meta")  # as if accelerate had put the last layer on another GPU
    model = ReftModel(base, ReftConfig.for_layers([0, 2], 3, rank=2))
    devices = [{p.device.type for p in site.parameters()} for site in model.interventions]
    assert devices == [{"cpu"}, {"meta"}]


def test_several_folders_share_one_base_model_and_each_record_is_read_once(
    adapter_dir, monkeypatch
):
    reads = []
    real = loading.load_adapter_config
    monkeypatch.setattr(loading, "load_adapter_config", lambda p: reads.append(p) or real(p))
    loaded = load_adapters({"x": adapter_dir, "y": adapter_dir}, placement=Placement("cpu"))
    assert isinstance(loaded.model, ReftModel) and loaded.model.adapter_names == ["x", "y"]
    assert reads == [adapter_dir, adapter_dir]


def test_an_adapter_saved_before_the_restructuring_loads_and_gives_its_logits(base_dir):
    """tests/fixtures/adapter_v1 was written by reft at commit 1420a05 (the flat package), with
    the logits it gave on a fixed batch; the same tiny base model is rebuilt from its seed."""
    expected = load_file(str(FIXTURES / "adapter_v1_logits.safetensors"))
    loaded = load_adapters(
        {"old": FIXTURES / "adapter_v1"}, base_model=str(base_dir), placement=Placement("cpu")
    )
    with torch.no_grad():
        logits = loaded.model(
            expected["input_ids"],
            expected["attention_mask"],
            prompt_lengths=torch.tensor([6, 4]),
        ).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    with loaded.model.disable_adapter(), torch.no_grad():
        plain = loaded.model(
            expected["input_ids"], expected["attention_mask"], prompt_lengths=torch.tensor([6, 4])
        ).logits
    assert not torch.allclose(plain, expected["logits"], atol=1e-3)


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_cli_refuses_a_missing_gpu_in_one_line(adapter_dir, command):
    extra = ["--prompt", "hi"] if command == "generate" else ["--tasks", "boolq"]
    result = reft(command, "--adapter", str(adapter_dir), "--device", "cuda", *extra)
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr and "Traceback" not in result.stdout + result.stderr
