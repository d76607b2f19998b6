"""The paper's LoRA setup for an E2LLM, as a peft `LoraConfig`.

Kept out of the model files on purpose: those are copied into every saved folder, and loading a folder must
not need peft.
"""

from peft import LoraConfig

from .configuration_e2llm import E2LLMConfig


def lora_config(config: E2LLMConfig, encoder: bool = True, decoder: bool = True) -> LoraConfig:
    """LoRA on the decoder and on the encoder's last `config.encoder_lora_layers` layers, the adapter trained in
    full (`modules_to_save`). Turn a part off to freeze it. The pretrained copies of those layers that rank
    chunks for hybrid recall (`model.ranking_layers`) never match, so they stay frozen."""
    targets = []
    if encoder and config.encoder_lora_layers > 0:
        n = config.encoder_config.num_hidden_layers
        layers = "|".join(str(i) for i in range(max(0, n - config.encoder_lora_layers), n))
        modules = "|".join(config.encoder_lora_modules)
        targets.append(rf"model\.encoder\.(?:.*\.)?layers?\.(?:{layers})\..*\.(?:{modules})")
    if decoder:
        targets.append(rf"model\.language_model\..*\.(?:{'|'.join(config.decoder_lora_modules)})")
    if not targets:
        raise ValueError("LoRA on neither encoder nor decoder: train the adapter alone by freezing the rest instead.")
    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="|".join(f"(?:{target})" for target in targets), modules_to_save=["adapter"])
