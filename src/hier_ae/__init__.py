"""hier_ae: a byte-level hierarchical autoencoder that learns its own tokenisation.

Importing the package registers the classes with the transformers Auto classes, so that
`AutoModel.from_pretrained(folder)` works in-process; a saved folder also carries the code
(`trust_remote_code=True`) and loads without this package installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .configuration_hier_ae import HierAEConfig, LevelConfig, TopLMConfig
from .modeling_hier_ae import HierAEForCausalLM, HierAEModel, HierAEPreTrainedModel
from .outputs import HierAECausalLMOutput, HierAEDecoderOutput, HierAEEncoderOutput, HierAEOutput
from .tokenization_hier_ae import HierAEByteTokenizer

HierAEConfig.register_for_auto_class()
HierAEModel.register_for_auto_class("AutoModel")
HierAEForCausalLM.register_for_auto_class("AutoModelForCausalLM")
HierAEByteTokenizer.register_for_auto_class("AutoTokenizer")
AutoConfig.register("hier_ae", HierAEConfig, exist_ok=True)
AutoModel.register(HierAEConfig, HierAEModel, exist_ok=True)
AutoModelForCausalLM.register(HierAEConfig, HierAEForCausalLM, exist_ok=True)
AutoTokenizer.register(HierAEConfig, HierAEByteTokenizer, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "HierAEConfig",
    "LevelConfig",
    "TopLMConfig",
    "HierAEModel",
    "HierAEForCausalLM",
    "HierAEPreTrainedModel",
    "HierAEByteTokenizer",
    "HierAEOutput",
    "HierAECausalLMOutput",
    "HierAEEncoderOutput",
    "HierAEDecoderOutput",
]
