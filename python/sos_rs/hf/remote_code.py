"""Export of the families that have no Hugging Face architecture of their own (MoA, DiscoverLM,
SAGI): model.safetensors (written by the `safetensors` package; weights and buffers) + config.json
+ the family's modeling file (modeling_sos_moa.py, modeling_sos_sagi.py).

config.json holds every field of the family's config plus `model_type`, `architectures` and
`auto_map`, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` builds the
PyTorch reference in the modeling file and loads the same weights under the same names.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import List, Optional, Union

import numpy as np

MODELING = pathlib.Path(__file__).with_name("modeling_sos_moa.py")
# model_type -> (HF config class, HF model class) in its modeling file
HF_CLASSES = {
    "sos_moa": ("SosMoAConfig", "SosMoAForCausalLM"),
    "sos_discoverlm": ("SosDiscoverLMConfig", "SosDiscoverLMForCausalLM"),
    "sos_sagi": ("SosSAGIConfig", "SosSAGIForCausalLM"),
}
# model_type -> modeling file, where it is not MODELING
MODELING_FILES = {"sos_sagi": pathlib.Path(__file__).with_name("modeling_sos_sagi.py")}


def export_pretrained(model, out_dir: Union[str, pathlib.Path], extra_config: Optional[dict] = None) -> pathlib.Path:
    """Writes the export directory for a MoA, DiscoverLM or SAGI model; returns its path.
    `extra_config` adds keys to config.json (token ids, for instance)."""
    write_remote_code(model, pathlib.Path(out_dir), extra_config)
    return pathlib.Path(out_dir)


def write_remote_code(model, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
    """The family's `export_hf`: weights, config.json and the modeling file; the paths written."""
    from safetensors.numpy import save_file

    from ..models.base import ExportError

    model_type = model.hf_model_type
    if model_type not in HF_CLASSES:
        raise ExportError(
            f"export_pretrained: no Hugging Face reference for {type(model).__name__} (families: {sorted(HF_CLASSES)})"
        )
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(arr, dtype=np.float32) for name, arr in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg_cls, model_cls = HF_CLASSES[model_type]
    modeling = MODELING_FILES.get(model_type, MODELING)
    config = dict(model.config.to_dict())
    config.update(
        model_type=model_type,
        architectures=[model_cls],
        torch_dtype="float32",
        tie_word_embeddings=model.config.tie_embeddings,
        auto_map={"AutoConfig": f"{modeling.stem}.{cfg_cls}", "AutoModelForCausalLM": f"{modeling.stem}.{model_cls}"},
    )
    config.update(extra_config or {})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(modeling, out / modeling.name)
    return [out / "model.safetensors", out / "config.json", out / modeling.name]


def load_pretrained(path: Union[str, pathlib.Path]):
    """Builds the sos_rs model named by config.json's model_type and loads model.safetensors."""
    from safetensors.numpy import load_file

    path = pathlib.Path(path)
    from ..models.registry import family_for_model_type

    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") not in HF_CLASSES:
        raise ValueError(
            f"load_pretrained: unknown model_type {config.get('model_type')!r} (known: {sorted(HF_CLASSES)})"
        )
    model_cls = family_for_model_type(config["model_type"])
    model = model_cls(model_cls.config_class.from_dict(config))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model


def reference_classes(model_type: str):
    """(config class, model class) of the PyTorch reference for `model_type`, imported from its
    modeling file inside this package (needs torch). KeyError when the type has none."""
    import importlib

    cfg_cls, model_cls = HF_CLASSES[model_type]
    module = importlib.import_module(f"{__package__}.{MODELING_FILES.get(model_type, MODELING).stem}")
    return getattr(module, cfg_cls), getattr(module, model_cls)
