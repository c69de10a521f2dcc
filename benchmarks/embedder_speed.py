"""Sentences per second of the local embedder: padding to each batch's longest vs to 256.

    python benchmarks/embedder_speed.py [--n 1000] [--batch-size 16] [--model-dir DIR]

Texts are ~1000 mixed-length pieces of the sample corpus (single sentences up to whole
paragraphs). Three ways to run the same ONNX session:
- `gristmill`: LocalOnnxEmbedder as shipped (sorted by length, each batch padded to its longest);
- `longest, unsorted`: batches in input order, padded to their longest (no length sorting);
- `pad to 256`: every input padded to 256 tokens, as Chroma's stock ONNX MiniLM does.
All three must give the same vectors; the script checks that and prints the largest difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.embeddings import LocalOnnxEmbedder  # noqa: E402
from tasks.model_files import missing_files, provision_embedding_model  # noqa: E402


def corpus_texts(n: int) -> list[str]:
    """`n` texts from the sample corpus: mostly sentences, every fifth a whole paragraph."""
    paragraphs: list[str] = []
    for folder in (REPO / "data" / "documents", REPO / "data" / "transcripts"):
        for path in sorted(folder.rglob("*")):
            if path.suffix in {".md", ".txt", ".vtt", ".srt", ".html", ".jsonl"}:
                text = re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8", errors="replace"))
                paragraphs += [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if len(p) > 20]
    sentences = [s for p in paragraphs for s in re.split(r"(?<=[.!?])\s+", p) if len(s) > 15]
    texts: list[str] = []
    while len(texts) < n:
        i = len(texts)
        texts.append(
            paragraphs[i % len(paragraphs)] if i % 5 == 0 else sentences[i % len(sentences)]
        )
    return texts


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[:, :, None].astype(np.float32)
    vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


def fixed_padding_embed(embedder: LocalOnnxEmbedder, batch_size: int, length: int | None):
    """Embed in input order with the embedder's session; pad to `length` (None: batch longest)."""
    import tokenizers

    session, _ = embedder._load()
    tokenizer = tokenizers.Tokenizer.from_file(str(embedder.model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    if length is None:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    else:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=length)

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            encodings = tokenizer.encode_batch(texts[start : start + batch_size])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out.append(pooled(session.run(None, feeds)[0], mask))
        return np.vstack(out)

    return embed


def measure(embed: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[float, np.ndarray]:
    embed(texts[:8])  # warm-up
    start = time.perf_counter()
    vectors = embed(texts)
    return len(texts) / (time.perf_counter() - start), vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-dir", type=Path, default=REPO / "data/models/all-MiniLM-L6-v2")
    args = parser.parse_args()

    if missing_files(args.model_dir):
        provision_embedding_model(args.model_dir)
    embedder = LocalOnnxEmbedder(args.model_dir, batch_size=args.batch_size, threads=args.threads)
    texts = corpus_texts(args.n)
    lengths = np.array(embedder.count_tokens(texts)) + 2
    print(
        f"{len(texts)} texts, word pieces per text: median {int(np.median(lengths))}, "
        f"mean {lengths.mean():.0f}, max {lengths.max()} ({(lengths > 256).sum()} truncated); "
        f"batch {args.batch_size}, intra-op threads {embedder.threads}"
    )
    runs = {
        "gristmill (sorted, pad to batch longest)": embedder.embed,
        "pad to batch longest, unsorted": fixed_padding_embed(embedder, args.batch_size, None),
        "pad to 256 (Chroma stock)": fixed_padding_embed(embedder, args.batch_size, 256),
    }
    results = {}
    reference = None
    for name, embed in runs.items():
        rate, vectors = measure(embed, texts)
        diff = 0.0 if reference is None else float(np.abs(vectors - reference).max())
        reference = vectors if reference is None else reference
        results[name] = {"sentences_per_s": round(rate, 1), "max_abs_diff": diff}
        print(f"{name:45s} {rate:8.1f} sentences/s   max |diff| vs first {diff:.2e}")
    base = results["pad to 256 (Chroma stock)"]["sentences_per_s"]
    ours = results["gristmill (sorted, pad to batch longest)"]["sentences_per_s"]
    print(f"speed-up over padding to 256: {ours / base:.1f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
