"""Where an ingest's CPU goes besides embedding: each step alone, on the same chunks, in one run.

    python benchmarks/ingest_costs.py [--files 200] [--seed 0] [--json]

Issue 15 asks an ingest to reach >= 95 % of the bare embedder's throughput: everything it does
besides embedding may cost at most ~5 % of the embedding. This measures, in one process and on
the chunks of one generated docs tree (tests/support/docs_tree.py, as
benchmarks/docs_tree_ingest.py builds it), the CPU seconds (`time.process_time`, all threads)
of the steps an ingest runs, each alone, with the real components and no Prefect:

1. load + chunk: `prepare_documents` with the local embedder's token counter;
2. embed: `LocalOnnxEmbedder.embed` over every chunk text (the session loaded and warmed first);
3. store: the chunks written with their vectors through `open_store_for_writing`, as the
   ingest's write step does (Chroma on disk and the lexical index), per batch of 32 documents;
4. Chroma alone and the lexical index alone, the same writes split in two.

Each step is shown as a share of the embedding's CPU. What the ingest adds on top of these
(Prefect's task runs, the quality checks, great-expectations' import, the Prefect server's
own CPU on the same cores) is not in this sum; benchmarks/docs_tree_ingest.py measures the
whole command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODEL_DIR = REPO / "data" / "models" / "all-MiniLM-L6-v2"
DOCS_PER_BATCH = 32


def cpu_of(step: Any) -> tuple[float, float, Any]:
    """(CPU seconds, wall seconds, result) of `step()`."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = step()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def run(files: int, seed: int) -> dict[str, Any]:
    import numpy as np

    from tasks.chroma_client import open_chroma
    from tasks.documents import discover_documents
    from tasks.embeddings import build_embedder
    from tasks.ingestion.prepare import chunk_budget, prepare_documents
    from tasks.lexical import open_lexical
    from tasks.retrieval import open_store_for_writing
    from tasks.settings import Settings
    from tasks.vectorstore import ChunkStore
    from tests.support.docs_tree import build_tree

    with tempfile.TemporaryDirectory(prefix="ingest-costs-") as name:
        tmp = Path(name)
        tree = build_tree(tmp / "docs", files, seed)
        settings = Settings(_env_file=None, data_dir=tmp / "data", model_dir=MODEL_DIR)  # type: ignore[call-arg]
        embedder = build_embedder(settings)
        paths = discover_documents([tree.root])
        budget = chunk_budget(settings.doc_chunk_tokens, embedder)

        def prepare() -> Any:
            return prepare_documents(
                paths,
                embedder,
                max_tokens=budget,
                overlap_tokens=settings.doc_chunk_overlap_tokens,
            )

        chunk_cpu, chunk_wall, prepared = cpu_of(prepare)
        documents = prepared.documents
        chunks = [c for d in documents for c in d.chunks]
        texts = [c.embedded_text for c in chunks]
        embedder.embed(["warm up the session"])
        embed_cpu, embed_wall, vectors = cpu_of(lambda: embedder.embed(texts))

        # the chunks of each batch of 32 documents, with the rows of their vectors
        parts: list[tuple[list[Any], slice]] = []
        for i in range(0, len(documents), DOCS_PER_BATCH):
            part = [c for d in documents[i : i + DOCS_PER_BATCH] for c in d.chunks]
            start = parts[-1][1].stop if parts else 0
            parts.append((part, slice(start, start + len(part))))

        def write(store: ChunkStore) -> None:
            for part, rows in parts:
                store.upsert(
                    [c.id for c in part],
                    vectors[rows],
                    [c.text for c in part],
                    [c.metadata for c in part],
                )

        store_cpu, store_wall, _ = cpu_of(
            lambda: write(open_store_for_writing(settings, embedder, "costs-both"))
        )
        chroma_cpu, chroma_wall, _ = cpu_of(
            lambda: write(
                ChunkStore(open_chroma(settings), "costs-chroma", embedder.name, embedder.dimension)
            )
        )
        lexical = open_lexical(settings, "costs-lexical")

        def lexical_only() -> None:
            for part, _rows in parts:
                with lexical.writing():
                    lexical.upsert(
                        [c.id for c in part],
                        [str(c.metadata.get("source") or "") for c in part],
                        [c.text for c in part],
                    )

        lexical_cpu, lexical_wall, _ = cpu_of(lexical_only)
        lexical.close()
        assert np.asarray(vectors).shape[0] == len(chunks)

    def step(cpu: float, wall: float) -> dict[str, float]:
        return {
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "share_of_embedding_cpu": round(cpu / embed_cpu, 4),
        }

    return {
        "files": files,
        "documents": len(documents),
        "chunks": len(chunks),
        "chunk_chars": sum(len(t) for t in texts),
        "embed": step(embed_cpu, embed_wall),
        "load_and_chunk": step(chunk_cpu, chunk_wall),
        "store_chroma_and_lexical": step(store_cpu, store_wall),
        "chroma_alone": step(chroma_cpu, chroma_wall),
        "lexical_alone": step(lexical_cpu, lexical_wall),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="documents in the tree")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    from tasks.model_files import missing_files

    if missing_files(MODEL_DIR):
        print("the local model is not provisioned (make setup): nothing measured")
        return 0
    figures = run(args.files, args.seed)
    print(
        f"{figures['files']} files, {figures['documents']} documents to index, "
        f"{figures['chunks']} chunks ({figures['chunk_chars']:,} characters)"
    )
    print(f"{'step':<28} {'CPU s':>8} {'wall s':>8} {'of embedding CPU':>17}")
    for key in (
        "embed",
        "load_and_chunk",
        "store_chroma_and_lexical",
        "chroma_alone",
        "lexical_alone",
    ):
        row = figures[key]
        print(
            f"{key:<28} {row['cpu_s']:>8.2f} {row['wall_s']:>8.2f} "
            f"{100 * row['share_of_embedding_cpu']:>16.1f}%"
        )
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
