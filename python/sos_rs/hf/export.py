"""model.safetensors (written by the `safetensors` package) + config.json + modeling_sos_moa.py.

config.json holds every field of the family's config plus `model_type`, `architectures` and
`auto_map`, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` builds the
PyTorch reference in modeling_sos_moa.py and loads the same weights under the same names.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Optional, Union

import numpy as np

MODELING = pathlib.Path(__file__).with_name("modeling_sos_moa.py")
# model_type -> (HF config class, HF model class) in modeling_sos_moa.py
HF_CLASSES = {
    "sos_moa": ("SosMoAConfig", "SosMoAForCausalLM"),
    "sos_discoverlm": ("SosDiscoverLMConfig", "SosDiscoverLMForCausalLM"),
}


def _families() -> dict:
    from ..models import FAMILIES

    return {cfg.model_type: (cfg, model) for cfg, model in FAMILIES.values() if hasattr(cfg, "model_type")}


def export_pretrained(model, out_dir: Union[str, pathlib.Path], extra_config: Optional[dict] = None) -> pathlib.Path:
    """Writes the export directory for a MoA or DiscoverLM model; returns its path.
    `extra_config` adds keys to config.json (token ids, for instance)."""
    from safetensors.numpy import save_file

    model_type = getattr(type(model.config), "model_type", None)
    if model_type not in HF_CLASSES:
        raise ValueError(f"export_pretrained: no Hugging Face reference for {type(model).__name__} (families: {sorted(HF_CLASSES)})")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(arr, dtype=np.float32) for name, arr in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg_cls, model_cls = HF_CLASSES[model_type]
    config = dict(model.config.to_dict())
    config.update(model_type=model_type, architectures=[model_cls], torch_dtype="float32", tie_word_embeddings=model.config.tie_embeddings,
                  auto_map={"AutoConfig": f"modeling_sos_moa.{cfg_cls}", "AutoModelForCausalLM": f"modeling_sos_moa.{model_cls}"})
    config.update(extra_config or {})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(MODELING, out / MODELING.name)
    return out


def load_pretrained(path: Union[str, pathlib.Path]):
    """Builds the sos_rs model named by config.json's model_type and loads model.safetensors."""
    from safetensors.numpy import load_file

    path = pathlib.Path(path)
    config = json.loads((path / "config.json").read_text())
    families = _families()
    if config.get("model_type") not in families:
        raise ValueError(f"load_pretrained: unknown model_type {config.get('model_type')!r} (known: {sorted(families)})")
    cfg_cls, model_cls = families[config["model_type"]]
    model = model_cls(cfg_cls.from_dict(config))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model
