"""reft: Representation Finetuning (ReFT) of language models, from the command line and from Python."""

from reft_cli.adapter_config import InterventionConfig, ReftConfig
from reft_cli.errors import ReftError
from reft_cli.model import ReftModel, get_reft_model

__all__ = ["InterventionConfig", "ReftConfig", "ReftError", "ReftModel", "get_reft_model"]
__version__ = "0.1.0"
