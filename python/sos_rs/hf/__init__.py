"""Hugging Face folders: `export_hf` writes a trained model with its tokenizer (the dense family
as LlamaForCausalLM, the others with their PyTorch modeling file for `trust_remote_code=True`);
`export_pretrained` / `load_pretrained` write and read the remote-code folders of MoA and
DiscoverLM. Per-architecture mappings live beside them (`llama.py`, `remote_code.py`)."""

from .export import export_hf
from .remote_code import export_pretrained, load_pretrained

__all__ = ["export_hf", "export_pretrained", "load_pretrained"]
