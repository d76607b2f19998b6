"""Model folders without their weights, for throughput benchmarks on machines the real weights cannot reach:

    python -m training.architectures --output DIR [--tiny]

writes DIR/encoder and DIR/decoder holding config.json and the tokenizer files (no weights, a few MB): the
embedded default's (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) or, with `--tiny`, the test suite's tiny BERT
and Llama (with the same tokenizers). `with_random_weights` builds a model from such a folder's config.json:
the same architecture runs the same FLOPs at the same speed as the trained weights, so it serves a
throughput measurement (`python -m training.benchmark --architectures DIR`), never a quality figure.
"""

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, BertConfig, LlamaConfig

from modeling_e2llm.embedded_default import default_decoder_path, default_encoder_path

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot")
# The tiny models of tests/conftest.py: every layer of the real architectures at a few MB.
TINY_ENCODER = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=512)
TINY_DECODER = LlamaConfig(vocab_size=49152, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=96, max_position_embeddings=2048,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def write_architectures(output: Path, tiny: bool = False) -> Path:
    """DIR/encoder and DIR/decoder: the embedded default's folders without weights (tiny: their configs
    replaced by the tiny ones)."""
    for part, source, tiny_config in (("encoder", default_encoder_path(), TINY_ENCODER),
                                      ("decoder", default_decoder_path(), TINY_DECODER)):
        folder = output / part
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns(*WEIGHT_FILES, "README.md", ".gitattributes"))
        if tiny:
            tiny_config.save_pretrained(folder)
    return output


def with_random_weights(folder: Path, output: Path, seed: int = 0) -> Path:
    """A copy of `folder` (config.json and tokenizer) with weights drawn at random from its config (seeded)."""
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    causal = any(name.endswith("ForCausalLM") for name in config.architectures or []) or config.model_type == "llama"
    if causal:
        model = AutoModelForCausalLM.from_config(config)
    else:  # a sentence encoder: E2LLM never uses the pooler
        model = AutoModel.from_config(config, add_pooling_layer=False)
    shutil.copytree(folder, output, dirs_exist_ok=True)
    model.save_pretrained(output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for encoder/ and decoder/")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny BERT and Llama instead")
    args = parser.parse_args(argv)
    print(write_architectures(Path(args.output), args.tiny))


if __name__ == "__main__":
    main()
