"""Properties of the results store and the chunk store (hypothesis): whatever cuts a run short (a truncated file, a
kill between two writes, a full disk), the rerun of the same appends gives the rows of an uninterrupted run, none
lost, none twice, none invented; two writers give the union of their blocks, each once; a killed chunked array is
finished by making only its missing chunks."""

from __future__ import annotations

import errno
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pdm_bench import storage
from pdm_bench.errors import UserError
from pdm_bench.results import ResultRow, ResultsStore
from pdm_bench.storage import chunked_array, load_array

PROPERTY = settings(max_examples=50, deadline=None)
Block = tuple[str, list[ResultRow]]


class Killed(BaseException):
    """The process dies here (nothing after it runs as it would have)."""


def rows_of(label: str, defense: str, values: list[float]) -> list[ResultRow]:
    return [ResultRow("digits", "quick", 0, defense, "gray", label, metric, value, 3, "r1", "2026-01-01T00:00:00")
            for metric, value in zip(("auc", "auc_low", "auc_high", "accuracy"), values)]


@st.composite
def runs(draw: st.DrawFn) -> list[Block]:
    """A run's blocks: distinct labels, one to four rows each (the first one the legacy marker, as ``auc``)."""
    labels = draw(st.lists(st.sampled_from(["clean", "cw", "fgsm-0.1", "bim-0.1", "jsma", "cw-wb"]), min_size=1,
                           max_size=4, unique=True))
    defense = draw(st.sampled_from(["pdm", "rce", "pdm, k=5", 'say "x"', "défense"]))  # quoted and multibyte fields
    values = st.floats(allow_nan=False, allow_infinity=False, width=64)
    return [(label, rows_of(label, defense, draw(st.lists(values, min_size=1, max_size=4)))) for label in labels]


def content(rows: list[ResultRow]) -> list[tuple[object, ...]]:
    """The rows without their time (a finished record's time is when it was written)."""
    return [astuple(r)[:10] + astuple(r)[11:] for r in rows]


def append_all(store: ResultsStore, blocks: list[Block]) -> None:
    """The appends of a run (a rerun repeats them; each is skipped when already finished)."""
    for label, rows in blocks:
        store.append(rows, completes=label, legacy=(label, rows[0].metric))


def uninterrupted(blocks: list[Block]) -> tuple[list[tuple[object, ...]], bytes]:
    with tempfile.TemporaryDirectory() as directory:
        store = ResultsStore(directory)
        append_all(store, blocks)
        return content(store.rows()), store.path.read_bytes()


@contextmanager
def writes_cut_after(count: int, *, kill: bool, room: int) -> Iterator[list[int]]:
    """The ``count``-th low-level write writes ``room`` bytes at most and then the process is killed (``kill``: no
    cleanup cuts the file back) or the disk is full (ENOSPC); yields ``[the number of writes tried]``."""
    real_write, real_truncate, calls, dead = os.write, os.ftruncate, [0], [False]

    def write(fd: int, data: bytes) -> int:
        calls[0] += 1
        if calls[0] < count:
            return real_write(fd, data)
        real_write(fd, bytes(data)[:room])
        dead[0] = kill
        raise Killed() if kill else OSError(errno.ENOSPC, "No space left on device")

    def ftruncate(fd: int, size: int) -> None:
        if not dead[0]:
            real_truncate(fd, size)

    with mock.patch.object(storage.os, "write", write), mock.patch.object(storage.os, "ftruncate", ftruncate):
        yield calls


def writes_of(blocks: list[Block]) -> int:
    """How many low-level writes an uninterrupted run makes."""
    with tempfile.TemporaryDirectory() as directory, writes_cut_after(10**9, kill=True, room=0) as calls:
        append_all(ResultsStore(directory), blocks)
    return calls[0]


@PROPERTY
@given(blocks=runs(), where=st.floats(0, 1))
def test_a_rerun_after_any_truncation_gives_the_uninterrupted_rows(blocks: list[Block], where: float) -> None:
    """Any cut after the first block (a first block is written by one atomic replace: it is whole or absent)."""
    expected, full = uninterrupted(blocks)
    first = full.index(b"\n", full.index(b",finished,")) + 1
    cut = first + round(where * (len(full) - first))
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "results.csv").write_bytes(full[:cut])
        read = content(ResultsStore(directory).rows())
        assert read == expected[: len(read)]  # a prefix of whole blocks, nothing invented
        append_all(ResultsStore(directory), blocks)
        assert content(ResultsStore(directory).rows()) == expected


@PROPERTY
@given(blocks=runs(), writers=st.lists(st.sampled_from(["a", "b", "ab"]), min_size=4, max_size=4),
       order=st.randoms(use_true_random=False))
def test_two_writers_interleaved_give_each_block_once(blocks: list[Block], writers: list[str], order: object) -> None:
    """Blocks of writer a, of writer b, or of both (both ran the same attack), appended in any interleaving."""
    expected, _ = uninterrupted(blocks)
    queues = {name: [b for b, w in zip(blocks, writers) if name in w] for name in "ab"}
    with tempfile.TemporaryDirectory() as directory:
        stores = {name: ResultsStore(directory) for name in "ab"}
        while queues["a"] or queues["b"]:
            name = order.choice([n for n in "ab" if queues[n]])  # type: ignore[attr-defined]
            append_all(stores[name], [queues[name].pop(0)])
        got = content(ResultsStore(directory).rows())
    assert Counter(got) == Counter(expected) and len(got) == len(expected)


@PROPERTY
@given(blocks=runs(), count=st.integers(1, 6), kill=st.booleans(), room=st.integers(0, 200))
def test_a_kill_or_a_full_disk_between_any_two_writes_then_a_rerun_gives_the_uninterrupted_rows(
        blocks: list[Block], count: int, kill: bool, room: int) -> None:
    expected, _ = uninterrupted(blocks)
    cut = False
    with tempfile.TemporaryDirectory() as directory:
        try:
            with writes_cut_after(count, kill=kill, room=room):
                append_all(ResultsStore(directory), blocks)
        except Killed:
            cut = True
        except UserError as error:
            cut = not kill and "the disk is full" in str(error)
        assert cut == (count <= writes_of(blocks))  # the cut happened, as the one it was
        append_all(ResultsStore(directory), blocks)
        assert content(ResultsStore(directory).rows()) == expected
        if not kill:  # a failed write leaves no temporary file
            assert not [p.name for p in Path(directory).iterdir() if ".tmp" in p.name]


def image_rows(part: slice) -> np.ndarray:
    rows = np.arange(part.start, part.stop, dtype=np.float32)
    return np.stack([rows, rows * 0.5 + 1]).T.reshape(-1, 1, 2)


@PROPERTY
@given(n=st.integers(1, 60), chunk_size=st.integers(1, 25), count=st.integers(1, 20), room=st.integers(0, 300),
       in_make=st.booleans())
def test_a_chunked_array_killed_anywhere_is_finished_by_making_only_its_missing_chunks(
        n: int, chunk_size: int, count: int, room: int, in_make: bool) -> None:
    """Killed while making the ``count``-th chunk (``in_make``) or inside the ``count``-th write."""
    shape = (n, 1, 2)
    expected = image_rows(slice(0, n))
    parts = [slice(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]

    def dying(part: slice) -> np.ndarray:
        if in_make and part.start == chunk_size * (count - 1):
            raise Killed()
        return image_rows(part)

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "adversarial" / "cw.npy"
        try:
            with writes_cut_after(10**9 if in_make else count, kill=True, room=room):
                chunked_array(path, shape, dying, chunk_size=chunk_size, label="cw", log=lambda _: None)
        except Killed:
            pass
        parts_dir = path.with_name("cw.parts")
        whole = load_array(path, shape) is not None
        missing = [] if whole else [p.start for p in parts if load_array(
            parts_dir / f"{p.start:07d}-{p.stop:07d}.npy", (p.stop - p.start, 1, 2)) is None]
        made: list[int] = []

        def make(part: slice) -> np.ndarray:
            made.append(part.start)
            return image_rows(part)

        array, _ = chunked_array(path, shape, make, chunk_size=chunk_size, label="cw", log=lambda _: None)
        assert made == missing
        np.testing.assert_array_equal(array, expected)
        assert array.dtype == expected.dtype and np.array_equal(np.load(path), expected)
