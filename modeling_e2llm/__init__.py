"""E2LLM model package: config, model and chunking processor (the files copied into every Hub folder)."""

from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

from .configuration_e2llm import E2LLMConfig
from .context_cache import ContextCache
from .modeling_e2llm import E2LLMAdapter, E2LLMForCausalLM, E2LLMModel
from .processing_e2llm import E2LLMProcessor, split_into_chunks

# With the package installed, Auto classes resolve "e2llm" to these classes even for saved folders.
AutoConfig.register("e2llm", E2LLMConfig, exist_ok=True)
AutoModelForCausalLM.register(E2LLMConfig, E2LLMForCausalLM, exist_ok=True)
AutoProcessor.register(E2LLMConfig, E2LLMProcessor, exist_ok=True)

__all__ = ["ContextCache", "E2LLMConfig", "E2LLMForCausalLM", "E2LLMModel", "E2LLMAdapter", "E2LLMProcessor", "split_into_chunks"]
