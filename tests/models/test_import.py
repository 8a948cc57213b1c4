"""`sos import --hf`: tiny random checkpoints of every supported architecture, built locally with
transformers, import with logits within 1e-4 of transformers on the same ids (float32 and
bfloat16 files, single and sharded); Llama survives import -> export --hf with identical tensors;
every export loads back in transformers with the same logits; an imported run trains with
`[model] init`, samples, evaluates; unsupported or damaged folders are refused by name."""

from __future__ import annotations

import json
import pathlib
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from sos_rs.autograd import no_grad  # noqa: E402
from sos_rs.hf.importer import import_hf  # noqa: E402
from sos_rs.hf.mapping import HFImportError  # noqa: E402
from sos_rs.train.run_io import load_model  # noqa: E402
from tests.support.hf_tiny import VOCAB, build, hf_config, torch_logits  # noqa: E402

SOS = [sys.executable, "-m", "sos_rs"]
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]
IDS = np.random.default_rng(1).integers(0, VOCAB, (2, 40))


def logits_of(model, ids=IDS) -> np.ndarray:
    with no_grad():
        return model.forward(ids).numpy()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {arch: (root / arch, build(arch, root / arch, seed=3)) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_import_matches_transformers(folders, arch, tmp_path):
    folder, ref = folders[arch]
    summary = import_hf(folder, tmp_path / "run")
    model, state, _ = load_model(str(tmp_path / "run"))
    diff = np.abs(logits_of(model) - torch_logits(ref, IDS)).max()
    print(f"{arch}: max |logits - transformers| = {diff:.2e}")
    assert diff < 1e-4
    assert summary["architecture"] == state["imported_from"]["architecture"]
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_bf16_and_sharded(arch, tmp_path):
    import torch

    ref = build(arch, tmp_path / "bf16", seed=5, dtype="bf16")
    run = tmp_path / "run"
    import_hf(tmp_path / "bf16", run)
    model, _, _ = load_model(str(run))
    assert np.abs(logits_of(model) - torch_logits(ref, IDS)).max() < 1e-4
    # the same weights as float32 shards behind an index
    ref.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    shutil.copy(tmp_path / "bf16" / "tokenizer.json", tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    import_hf(tmp_path / "sharded", tmp_path / "run2")
    model2, _, _ = load_model(str(tmp_path / "run2"))
    assert np.array_equal(logits_of(model2), logits_of(model))
    del torch


def test_llama_round_trip_identical_tensors(folders, tmp_path):
    folder, _ = folders["llama"]
    import_hf(folder, tmp_path / "run")
    out = subprocess.run(SOS + ["export", str(tmp_path / "run"), "--hf", str(tmp_path / "out")], capture_output=True)
    assert out.returncode == 0, out.stderr
    a, b = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_export_loads_in_transformers(folders, arch, tmp_path):
    folder, ref = folders[arch]
    import_hf(folder, tmp_path / "run")
    model, _, _ = load_model(str(tmp_path / "run"))
    model.export_hf(tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).float().eval()
    assert type(back).__name__ == type(ref).__name__
    assert np.abs(torch_logits(back, IDS) - torch_logits(ref, IDS)).max() < 1e-4


def _llama_with(tmp_path: pathlib.Path, **over) -> pathlib.Path:
    build("llama", tmp_path / "src", config=hf_config("llama", **over))
    return tmp_path / "src"


def _edit_config(folder: pathlib.Path, **over) -> pathlib.Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(over)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _edit_weights(folder: pathlib.Path, fn) -> pathlib.Path:
    tensors = load_file(str(folder / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _truncate(folder: pathlib.Path) -> pathlib.Path:
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    return folder


BAD = [
    ("architecture", lambda f: _edit_config(f, architectures=["GPT2LMHeadModel"]), "GPT2LMHeadModel is not supported"),
    (
        "rope scaling",
        lambda f: _edit_config(
            f, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}, rope_scaling=None
        ),
        "rope scaling kind 'llama3'",
    ),
    ("attention bias", lambda f: _edit_config(f, attention_bias=True), "attention_bias = True"),
    (
        "bias layout",
        lambda f: _edit_weights(f, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(32, "f4")})),
        "model.layers.0.self_attn.o_proj.bias",
    ),
    ("missing tensor", lambda f: _edit_weights(f, lambda t: t.pop("model.norm.weight")), "missing tensors model.norm"),
    (
        "shape",
        lambda f: _edit_weights(f, lambda t: t.update({"model.norm.weight": np.ones(31, "f4")})),
        "model.norm.weight has shape [31]",
    ),
    ("damaged file", _truncate, "does not fit its byte range"),
    ("no tokenizer", lambda f: (f / "tokenizer.json").unlink() or f, "has no tokenizer.json"),
    ("no weights", lambda f: (f / "model.safetensors").unlink() or f, "neither model.safetensors"),
    ("gelu gate", lambda f: _edit_config(f, hidden_act="gelu"), "hidden_act = 'gelu'"),
]


@pytest.mark.parametrize("damage,message", [(d, m) for _, d, m in BAD], ids=[b[0] for b in BAD])
def test_refusals(tmp_path, damage, message):
    folder = damage(_llama_with(tmp_path))
    with pytest.raises(HFImportError, match=None) as e:
        import_hf(folder, tmp_path / "run")
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_shorter_than_sequence_matches_transformers(arch, tmp_path):
    # Window 8 over 40 tokens binds on every sliding layer; the import keeps the real context (64).
    ref = build(arch, tmp_path / "src", seed=7, config=hf_config(arch, sliding_window=8))
    import_hf(tmp_path / "src", tmp_path / "run")
    model, _, _ = load_model(str(tmp_path / "run"))
    assert (model.config.sliding_window, model.config.max_seq_len) == (8, 64)
    want = torch_logits(ref, IDS)
    diff = np.abs(logits_of(model) - want).max()
    print(f"{arch} window 8, T 40: max |logits - transformers| = {diff:.2e}")
    assert diff < 1e-4
    # The window binds (full causal attention over these 40 tokens gives other logits) ...
    full = build(arch, tmp_path / "full", seed=7, config=hf_config(arch, sliding_window=64))
    assert np.abs(torch_logits(full, IDS) - want).max() > 1e-2
    # ... and the KV-cache path (sampling) applies it too: a prefix, then one token at a time.
    with no_grad():
        cache = model.new_cache(IDS.shape[0])
        steps = [model.forward(IDS[:, :11], cache).numpy()]
        steps += [model.forward(IDS[:, i : i + 1], cache).numpy() for i in range(11, IDS.shape[1])]
    assert np.abs(np.concatenate(steps, axis=1) - want).max() < 1e-4


def test_imported_run_trains_samples_evaluates(folders, tmp_path):
    folder, ref = folders["llama"]
    run = tmp_path / "imported"
    out = subprocess.run(SOS + ["import", "--hf", str(folder), "--out", str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rng = random.Random(0)
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(30):
        (texts / f"d{i}.txt").write_text(" ".join(f"w{rng.randrange(12)}" for _ in range(60)) + "\n")
    text_file = texts / "d0.txt"
    data = tmp_path / "data"
    prep = SOS + [
        "prepare",
        str(texts),
        "--out",
        str(data),
        "--tokenizer",
        str(folder / "tokenizer.json"),
        "--eot-token",
        "<eot>",
    ]
    assert subprocess.run(prep, capture_output=True).returncode == 0
    before = json.loads(subprocess.run(SOS + ["eval", str(run), "--text", str(text_file)], capture_output=True).stdout)
    cfg = tmp_path / "ft.toml"
    cfg.write_text(
        f'[model]\ninit = "{run}"\n\n[data]\ndir = "{data}"\nseq_len = 32\nbatch_size = 4\n\n'
        f'[optim]\nlr = 3e-3\n\n[schedule]\nwarmup_steps = 2\n\n[run]\nout = "{tmp_path / "ft"}"\nsteps = 25\n'
        "eval_every = 0\nsample_tokens = 0\nthreads = 1\n"
    )
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "initialised from" in out.stdout
    after = json.loads(
        subprocess.run(SOS + ["eval", str(tmp_path / "ft"), "--text", str(text_file)], capture_output=True).stdout
    )
    assert after["loss"] < before["loss"] - 0.5  # the imported weights were trained, not replaced
    sample = subprocess.run(
        SOS + ["sample", str(tmp_path / "ft"), "--prompt", "w1 w2", "--max-new-tokens", "5"], capture_output=True
    )
    assert sample.returncode == 0, sample.stderr
    # the fine-tuned run starts from the import: its step-0 weights are the imported ones
    model, state, _ = load_model(str(tmp_path / "ft"))
    assert state["model_config"]["d_model"] == 32 and state["train_config"]["model"]["init"] == str(run)


MEMORY_PROBE = """
import json, pathlib, sys
import numpy, safetensors, tokenizers  # loaded before the baseline, as any import needs them
import sos_rs
from sos_rs.hf.importer import import_hf
def hwm():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
base = hwm()
summary = import_hf(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
peak = hwm()
print(json.dumps({"f32_bytes": summary["parameters"] * 4, "growth": peak - base}))
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_import_peak_memory_stays_under_one_and_a_half_f32_models(tmp_path, dtype):
    """The whole `sos import` (memory-mapped read, one f32 conversion, the checkpoint streamed
    tensor by tensor) grows the process by less than 1.5x the model's f32 size."""
    import torch

    from tests.support.hf_tiny import word_tokenizer

    cfg = transformers.LlamaConfig(
        vocab_size=4000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=256, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(getattr(torch, dtype))
    model.save_pretrained(str(tmp_path / "hf"))
    word_tokenizer(tmp_path / "hf" / "tokenizer.json", [f"w{i}" for i in range(100)])
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "hf"), str(tmp_path / "run")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = r["growth"] / r["f32_bytes"]
    print(f"\nimport of a {r['f32_bytes'] / 2**20:.0f} MiB (f32) {dtype} Llama: peak growth {ratio:.2f}x")
    assert ratio < 1.5
