"""Export of a trained model to a Hugging Face folder: the family's own files (its `export_hf`:
model.safetensors, config.json, modeling code where needed) plus tokenizer.json and
tokenizer_config.json. The dense family loads with
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` as LlamaForCausalLM with the same
logits; MoA and DiscoverLM folders load with `trust_remote_code=True`."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import List, Optional


def export_hf(
    model, tokenizer_path: pathlib.Path, eot_token: Optional[str], eot_id: Optional[int], out: pathlib.Path
) -> List[pathlib.Path]:
    """Writes the folder; returns the paths written."""
    out = pathlib.Path(out)
    written = model.export_hf(out, extra_config={"bos_token_id": eot_id, "eos_token_id": eot_id})
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot_token,
        "eos_token": eot_token,
        "unk_token": None,
        "model_max_length": model.config.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return list(written) + [out / "tokenizer.json", out / "tokenizer_config.json"]
