"""`sos import --hf DIR`: a Hugging Face folder (config.json, model.safetensors or a sharded
index, tokenizer.json) of Llama, Mistral, Qwen2, Qwen3 or Gemma3 (text) layout becomes a dense
model, then a run folder (`RUN/tokenizer.json`, `RUN/checkpoints/step-00000000/`) that `sos
train` (`[model] init = "RUN"`), `sos sample`, `sos eval` and `sos export` take like any other.
Also the reverse: `write_dense`, the dense family's `export_hf`, picks the architecture whose
switches the model uses. Per-architecture mappings: `llama.py`, `mistral.py`, `qwen2.py`,
`qwen3.py`, `gemma3.py`; what they share: `mapping.py`.

Memory: safetensors files are memory-mapped and read a tensor at a time (F32, BF16 or F16),
converted to float32 once and copied into the model, whose weights start as untouched zeros; the
mapped pages of each tensor are dropped after use, so the peak stays near the float32 model plus
one tensor. Nothing is pickled and no code from the folder runs."""

from __future__ import annotations

import dataclasses
import json
import mmap
import pathlib
import platform
import shutil
import struct
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .gemma3 import GEMMA3
from .llama import LLAMA
from .mapping import Architecture, HFImportError, is_norm
from .mistral import MISTRAL
from .qwen2 import QWEN2
from .qwen3 import QWEN3

ARCHITECTURES: Dict[str, Architecture] = {a.name: a for a in (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA3)}
DTYPES = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}


# ---- reading ---------------------------------------------------------------------------------
def read_config(folder: pathlib.Path) -> Tuple[dict, Architecture]:
    """config.json and its architecture's mapping (refusing unknown or multimodal ones by name)."""
    path = folder / "config.json"
    if not path.is_file():
        raise HFImportError(f"{folder} has no config.json")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise HFImportError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise HFImportError(f"{path} does not hold a JSON object")
    archs = hf.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise HFImportError(
            f"architecture {', '.join(map(str, archs)) or '(none given)'} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    return hf, ARCHITECTURES[archs[0]]


def weight_files(folder: pathlib.Path) -> List[pathlib.Path]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        raise HFImportError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise HFImportError(f"{index} is not a safetensors index ({e})") from None
    files = []
    for name in sorted(set(weight_map.values())):
        shard = folder / name
        if pathlib.Path(name).name != name or not shard.is_file():
            raise HFImportError(f"{index} names shard {name!r}, which is not a file in {folder}")
        files.append(shard)
    return files


def _header(path: pathlib.Path, size: int, mm: mmap.mmap) -> Tuple[dict, int]:
    if size < 8:
        raise HFImportError(f"{path} is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", mm[:8])
    if n > size - 8:
        raise HFImportError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
    try:
        header = json.loads(bytes(mm[8 : 8 + n]))
    except (ValueError, UnicodeDecodeError) as e:
        raise HFImportError(f"{path}: damaged safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensors(files: List[pathlib.Path], use: Callable[[str, np.ndarray], None]) -> None:
    """Calls use(name, float32 array) for every tensor, one at a time, through a memory map. An
    F32 array is a view of the mapped file, valid only during the call (`use` copies it); BF16
    and F16 are converted once."""
    failed: Optional[HFImportError] = None
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header, base = _header(path, size, mm)
            for name, meta in header.items():
                try:
                    dtype, shape, (start, end) = meta["dtype"], [int(s) for s in meta["shape"]], meta["data_offsets"]
                except (KeyError, TypeError, ValueError):
                    raise HFImportError(f"{path}: damaged entry for tensor {name!r}") from None
                if dtype not in DTYPES:
                    raise HFImportError(f"{path}: tensor {name} has dtype {dtype} (supported: F32, BF16, F16)")
                count = int(np.prod(shape)) if shape else 1
                width = np.dtype(DTYPES[dtype]).itemsize
                if not (0 <= start <= end <= size - base) or end - start != count * width:
                    raise HFImportError(f"{path}: tensor {name} {dtype}{shape} does not fit its byte range")
                raw = np.frombuffer(mm, DTYPES[dtype], count, base + start)
                if dtype == "BF16":  # bfloat16 is the top half of a float32
                    wide = raw.astype(np.uint32)
                    np.left_shift(wide, 16, out=wide)
                    arr = wide.view(np.float32)
                else:
                    arr = raw.astype(np.float32, copy=False)
                try:
                    use(name, arr.reshape(shape))
                except HFImportError as e:
                    failed = e.with_traceback(None)  # its frames would pin the mapped buffer
                del raw, arr
                if failed is not None:
                    break
                page = mmap.PAGESIZE
                lo = (base + start) // page * page
                if end > start and hasattr(mm, "madvise"):
                    mm.madvise(mmap.MADV_DONTNEED, lo, base + end - lo)  # drop this tensor's pages
        if failed is not None:
            raise failed


# ---- building the model ----------------------------------------------------------------------
def dense_config(hf: dict, arch: Architecture, max_seq_len: Optional[int] = None):
    """The DenseConfig of an HF config.json. The context defaults to max_position_embeddings
    (sliding layers keep their window within it)."""
    from ..models.dense import DenseConfig

    fields = arch.to_dense(hf)
    if max_seq_len is not None:
        fields["max_seq_len"] = int(max_seq_len)
    try:
        return DenseConfig(**fields)
    except (TypeError, ValueError) as e:
        raise HFImportError(f"{arch.name}: {e}") from None


def load_dense(folder: pathlib.Path, max_seq_len: Optional[int] = None):
    """(DenseLM with the folder's weights, HF config, architecture)."""
    from .. import _core
    from ..models.dense import DenseLM

    hf, arch = read_config(folder)
    cfg = dense_config(hf, arch, max_seq_len)
    model = DenseLM(dataclasses.replace(cfg, init_std=0.0))  # zeros, filled below
    model.config = cfg
    params = dict(model.named_parameters())
    loaded: set = set()
    unexpected: List[str] = []

    def use(hf_name: str, arr: np.ndarray) -> None:
        name = arch.hf_to_ours(hf_name)
        if name is None or (name == "lm_head.weight" and cfg.tie_embeddings):
            return  # rotary caches; a tied checkpoint's copy of the head (the embedding is used)
        if name not in params:
            unexpected.append(hf_name)
            return
        p = params[name]
        if tuple(arr.shape) != tuple(p.shape):
            raise HFImportError(f"{hf_name} has shape {list(arr.shape)}; {arch.name} config implies {list(p.shape)}")
        if arch.norm_offset and is_norm(name):
            arr = arr + np.float32(arch.norm_offset)
        p.data = _core.Tensor(np.ascontiguousarray(arr))  # replaces untouched zero pages: one copy
        loaded.add(name)

    read_tensors(weight_files(folder), use)
    if unexpected:
        raise HFImportError(
            f"{arch.name}: tensors this layout does not have (unsupported bias or layer layout): "
            + ", ".join(sorted(unexpected)[:8])
            + (" ..." if len(unexpected) > 8 else "")
        )
    missing = sorted(set(params) - loaded)
    if missing:
        shown = ", ".join(arch.ours_to_hf(m) for m in missing[:8])
        raise HFImportError(f"{folder}: missing tensors {shown}{' ...' if len(missing) > 8 else ''}")
    for name, p in params.items():
        if not p.data.is_finite():
            raise HFImportError(f"{arch.ours_to_hf(name)} holds NaN or inf")
    return model, hf, arch


def _eot(hf: dict, tok, vocab: int) -> Optional[int]:
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if isinstance(eos, int) and 0 <= eos < vocab:
        return eos
    return None


def import_hf(folder: pathlib.Path, out: pathlib.Path, max_seq_len: Optional[int] = None) -> dict:
    """Writes the run folder `out` (which must be empty or absent; written atomically) and
    returns a summary: architecture, parameters, context, tensors read."""
    import sos_rs

    from ..train import checkpoint as ckpt
    from ..train.config import from_dict

    folder = pathlib.Path(folder)
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise HFImportError(f"{folder} has no tokenizer.json")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # the tokenizers library raises its own exception type
        raise HFImportError(f"{tok_path} is not a readable tokenizer ({e})") from None
    model, hf, arch = load_dense(folder, max_seq_len)
    cfg = model.config
    if tok.get_vocab_size(with_added_tokens=True) > cfg.vocab_size:
        raise HFImportError(
            f"tokenizer.json has {tok.get_vocab_size(with_added_tokens=True)} tokens; the model has {cfg.vocab_size}"
        )
    train_config = {
        "model": {"family": "dense"},
        "data": {"dir": "(imported: give sos train a [data] dir, sos eval --data or --text)"},
        "run": {"out": str(out)},
    }
    from_dict(train_config)  # the checkpoint schema requires a valid one
    state = {
        "model_family": "dense",
        "model_config": cfg.to_dict(),
        "train_config": train_config,
        "optimizer_step": 0,
        "belt": {},
        "rng": {"seed": 0, "note": "imported weights; no training yet"},
        "curriculum": None,
        "val_loss": None,
        "best_val_loss": None,
        "elapsed_s": 0.0,
        "versions": {"sos_rs": sos_rs.__version__, "python": platform.python_version(), "numpy": np.__version__},
        "tokenizer": "tokenizer.json",
        "eot_id": _eot(hf, tok, cfg.vocab_size),
        "imported_from": {"folder": str(folder.resolve()), "architecture": arch.name},
    }

    def write(tmp: pathlib.Path) -> list:
        shutil.copyfile(tok_path, tmp / "tokenizer.json")
        step = ckpt.save(tmp / "checkpoints", 0, model.lazy_state_dict(), {}, state)
        return [tmp / "tokenizer.json", step]

    from ..cli.export import write_atomically

    write_atomically(pathlib.Path(out), False, write)
    return {
        "architecture": arch.name,
        "parameters": model.num_parameters(),
        "max_seq_len": cfg.max_seq_len,
        "sliding_window": cfg.sliding_window,
        "out": str(out),
    }


# ---- export ----------------------------------------------------------------------------------
def architecture_of(cfg) -> Architecture:
    """The architecture a DenseConfig exports as: the one whose switches it uses."""
    from ..models.base import ExportError

    gemma = (cfg.mlp_activation == "gelu_tanh", cfg.sandwich_norm, cfg.embed_scale, cfg.qk_norm)
    if any(gemma[:3]):
        if not all(gemma):
            raise ExportError(
                "no Hugging Face architecture has GeGLU, sandwich norms or scaled embeddings without all "
                "four of Gemma3's switches (with qk_norm)"
            )
        return GEMMA3
    if cfg.query_pre_attn_scalar is not None or cfg.rope_local_theta is not None:
        raise ExportError("query_pre_attn_scalar and rope_local_theta export only with Gemma3's switches")
    if cfg.qk_norm and cfg.qkv_bias:
        raise ExportError("no Hugging Face architecture has both qk_norm and qkv_bias")
    if cfg.qk_norm:
        return QWEN3
    if cfg.qkv_bias:
        return QWEN2
    kinds = cfg.resolved_layer_types()
    if "sliding" in kinds:
        if "full" in kinds:
            raise ExportError("mixed sliding and full layers export only as Qwen2/Qwen3 or Gemma3")
        return MISTRAL
    return LLAMA


def write_dense(model, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
    """The dense family's `export_hf`: model.safetensors and config.json of its architecture."""
    from safetensors.numpy import save_file

    arch = architecture_of(model.config)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, arr in model.state_dict().items():
        if arch.norm_offset and is_norm(name):
            arr = arr - np.float32(arch.norm_offset)
        tensors[arch.ours_to_hf(name)] = np.ascontiguousarray(arr, dtype=np.float32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = arch.from_dense(model.config.to_dict(), extra_config)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return [out / "model.safetensors", out / "config.json"]
