"""Export of the sparse families to a Hugging Face style directory (model.safetensors +
config.json + the PyTorch reference modeling file for `trust_remote_code=True`), and loading
such a directory back into sos_rs."""

from .export import export_pretrained, load_pretrained

__all__ = ["export_pretrained", "load_pretrained"]
