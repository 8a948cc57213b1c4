"""HF export of the dense baseline: the folder holds the four files, the weights round-trip, and
where transformers is installed it loads as LlamaForCausalLM with the same logits (≤ 1e-4)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from sos_rs import DenseConfig, DenseLM, no_grad
from sos_rs.hf import export_hf


def tiny_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["to be or not to be, that is the question"] * 20, trainer)
    tok.save(str(path))
    return tok


@pytest.mark.parametrize("tied", [False, True])
def test_export_round_trip(tmp_path, tied):
    tok = tiny_tokenizer(tmp_path / "tokenizer.json")
    cfg = DenseConfig(
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=32,
        tie_embeddings=tied,
        seed=5,
    )
    model = DenseLM(cfg)
    out = tmp_path / "hf"
    export_hf(model, tmp_path / "tokenizer.json", "<|endoftext|>", 0, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    weights = load_file(str(out / "model.safetensors"))
    assert ("lm_head.weight" in weights) == (not tied)
    # Loaded into a differently seeded model, so a loader that did nothing could not pass.
    back = DenseLM(dataclasses.replace(cfg, seed=cfg.seed + 1))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
    with no_grad():
        ours = model(ids).numpy()
        assert not np.allclose(back(ids).numpy(), ours), "the two seeds must give different models"
        back.load_state_dict(weights)
        np.testing.assert_array_equal(back(ids).numpy(), ours)
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["architectures"] == ["LlamaForCausalLM"] and hf_cfg["tie_word_embeddings"] == tied

    transformers = pytest.importorskip(
        "transformers", reason="transformers not installed (pip install -e .[hf]); export files checked without it"
    )
    import torch

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32)
    assert type(hf).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    diff = np.abs(theirs - ours).max()
    print(f"\nHF LlamaForCausalLM logits max |Δ| = {diff:.2e} (tied={tied})")
    assert diff <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok.decode(hf_tok("to be or not")["input_ids"]) == "to be or not"
