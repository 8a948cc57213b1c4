"""Deterministic synthetic reasoning text for the curriculum's logic stage (no downloads).

Kinds, each example a question and its answer (the text is question + answer):
- arithmetic: multi-digit +, − and × with carries and borrows ("4821 + 937 =", " 5758");
- compare: comparison and sorting of numbers ("compare 71 and 305:", " 71 < 305";
  "sort 12 5 40:", " 5 12 40");
- logic: propositional formulas under an assignment ("p is true, q is false. (p and not q) or
  q is", " true") and syllogisms with nonsense terms ("All blick are dax. All dax are wug. Are
  all blick wug?", " yes"; invalid forms answer " no");
- reasoning: the three kinds mixed in equal shares.
Every example comes from numpy's PCG64 seeded by (seed, kind), so `--seed` reproduces a file
exactly; evaluation draws its held-out prompts from a different seed stream (EVAL_SEED)."""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np

KINDS = ("arithmetic", "compare", "logic", "reasoning")
EVAL_SEED = 0x5EED_E7A1
"""Seed of `sos eval --task` prompts; `sos synth` refuses it so training files never share it."""

Example = Tuple[str, str]


def _number(rng: np.random.Generator, lo_digits: int, hi_digits: int) -> int:
    digits = int(rng.integers(lo_digits, hi_digits + 1))
    return int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10**digits))


def arithmetic(rng: np.random.Generator) -> Example:
    op = ("+", "-", "*")[int(rng.integers(0, 3))]
    if op == "*":
        a, b = _number(rng, 1, 3), _number(rng, 1, 2)
        return f"{a} * {b} =", f" {a * b}"
    a, b = _number(rng, 2, 4), _number(rng, 1, 4)
    if op == "-":
        a, b = max(a, b), min(a, b)
        return f"{a} - {b} =", f" {a - b}"
    return f"{a} + {b} =", f" {a + b}"


def compare(rng: np.random.Generator) -> Example:
    if rng.random() < 0.5:
        a, b = _number(rng, 1, 4), _number(rng, 1, 4)
        rel = "<" if a < b else (">" if a > b else "=")
        return f"compare {a} and {b}:", f" {a} {rel} {b}"
    xs = [_number(rng, 1, 3) for _ in range(int(rng.integers(3, 6)))]
    return f"sort {' '.join(map(str, xs))}:", " " + " ".join(map(str, sorted(xs)))


TERMS = ("blick", "dax", "wug", "fep", "zorp", "tove", "grink", "mib", "snar", "plop")


def _formula(rng: np.random.Generator, names: List[str], depth: int) -> Tuple[str, Callable[[Dict[str, bool]], bool]]:
    if depth == 0 or rng.random() < 0.3:
        v = names[int(rng.integers(0, len(names)))]
        if rng.random() < 0.3:
            return f"not {v}", lambda env, v=v: not env[v]
        return v, lambda env, v=v: env[v]
    left, fl = _formula(rng, names, depth - 1)
    right, fr = _formula(rng, names, depth - 1)
    if rng.random() < 0.5:
        return f"({left} and {right})", lambda env: fl(env) and fr(env)
    return f"({left} or {right})", lambda env: fl(env) or fr(env)


def logic(rng: np.random.Generator) -> Example:
    if rng.random() < 0.5:
        names = ["p", "q", "r"][: int(rng.integers(2, 4))]
        env = {n: bool(rng.random() < 0.5) for n in names}
        text, f = _formula(rng, names, 2)
        facts = ", ".join(f"{n} is {'true' if env[n] else 'false'}" for n in names)
        return f"{facts}. {text} is", f" {'true' if f(env) else 'false'}"
    a, b, c = (TERMS[int(i)] for i in rng.choice(len(TERMS), 3, replace=False))
    form = int(rng.integers(0, 4))
    if form == 0:  # Barbara: valid
        return f"All {a} are {b}. All {b} are {c}. Are all {a} {c}?", " yes"
    if form == 1:  # undistributed middle: invalid
        return f"All {a} are {b}. All {c} are {b}. Are all {a} {c}?", " no"
    if form == 2:  # Celarent: valid
        return f"No {b} are {c}. All {a} are {b}. Are any {a} {c}?", " no"
    return f"Some {a} are {b}. All {b} are {c}. Are some {a} {c}?", " yes"  # Darii: valid


GENERATORS: Dict[str, Callable[[np.random.Generator], Example]] = {
    "arithmetic": arithmetic,
    "compare": compare,
    "logic": logic,
}


def examples(kind: str, n: int, seed: int) -> Iterator[Example]:
    """n (question, answer) pairs of `kind`, reproducible from `seed`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected {' | '.join(KINDS)})")
    if n < 0:
        raise ValueError(f"--n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    parts = list(GENERATORS) if kind == "reasoning" else [kind]
    for i in range(n):
        yield GENERATORS[parts[i % len(parts)]](rng)


PER_DOCUMENT = 8
"""Examples per JSON line (document), one per text line: documents long enough for the
length filter of `sos prepare`, and many examples per training row."""


def write_jsonl(kind: str, n: int, seed: int, out: pathlib.Path) -> int:
    """Writes n examples, PER_DOCUMENT to a JSON line {"text", "kind"} whose text holds one
    "question answer" per line; returns the bytes written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    batch: List[str] = []
    with open(out, "w", encoding="utf-8") as f:
        for i, (q, a) in enumerate(examples(kind, n, seed)):
            batch.append(q + a)
            if len(batch) == PER_DOCUMENT or i == n - 1:
                line = json.dumps({"text": "\n".join(batch), "kind": kind}) + "\n"
                f.write(line)
                size += len(line.encode())
                batch = []
    return size
