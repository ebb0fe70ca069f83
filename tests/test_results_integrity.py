"""The results file and the chunk store under writes cut short: a block without its ``finished`` record is never
taken as finished, a torn last line is never read, and a failed write is one line that names the file and leaves
nothing half written (a full disk is simulated by a patched write, or for real by a file-size limit)."""

from __future__ import annotations

import errno
import os
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from pdm_bench import storage
from pdm_bench.errors import UserError
from pdm_bench.results import LEGACY_COLUMNS, ResultRow, ResultsStore
from pdm_bench.storage import atomic_write_text, chunked_array, save_array


def row(attack: str, metric: str, value: float, *, run: str = "r1", detector: str = "kde") -> ResultRow:
    return ResultRow("digits", "quick", 0, "pdm", "gray", attack, metric, value, 3, run, "2026-01-01T00:00:00", detector)


def content(rows: list[ResultRow]) -> list[tuple[object, ...]]:
    """The rows without their time (a finished record's time is when it was written)."""
    return [astuple(r)[:10] + astuple(r)[11:] for r in rows]


CLEAN = [row("clean", "accuracy", 0.9)]
CW = [row("cw", "auc", 0.8), row("cw", "auc_low", 0.7), row("cw", "auc_high", 0.9), row("cw", "success_rate", 1.0)]


def run(store: ResultsStore) -> None:
    """The appends of a run, as the gray box makes them (each skipped when already finished)."""
    store.append(CLEAN, completes="clean", legacy=("clean", "accuracy"))
    store.append(CW, completes="cw", legacy=("cw", "auc"))


def test_a_block_cut_short_is_not_finished_and_a_rerun_writes_it_once(tmp_path: Path) -> None:
    run(store := ResultsStore(tmp_path))
    full, expected = store.path.read_bytes(), content(store.rows())
    clean_end = full.index(b"\n", full.index(b",clean,finished,")) + 1
    for cut in range(clean_end, len(full)):  # every cut inside the cw block, its finished record included
        store.path.write_bytes(full[:cut])
        cut_store = ResultsStore(tmp_path)
        assert not cut_store.finished("r1", "cw", legacy=("cw", "auc")), cut
        assert cut_store.finished("r1", "clean", legacy=("clean", "accuracy"))
        assert content(cut_store.rows()) == expected[:2], cut  # the clean block only
        assert not cut_store.has("r1", "cw", "auc")
        run(cut_store)
        assert content(ResultsStore(tmp_path).rows()) == expected, cut  # none lost, none twice
        assert store.path.read_bytes().count(b"\n") == full.count(b"\n")


def test_the_legacy_rule_holds_for_files_older_than_the_finished_record(tmp_path: Path) -> None:
    """An older file (no finished record; here without the detector column) is finished by its marker rows, also
    after a newer block was appended to it; the newer block is the first record."""
    older = "".join(f"{line}\n" for line in (",".join(LEGACY_COLUMNS), "digits,quick,0,pdm,gray,cw,auc,0.8,3,r1,t"))
    (tmp_path / "results.csv").write_text(older)
    store = ResultsStore(tmp_path)
    assert store.finished("r1", "cw", legacy=("cw", "auc")) and not store.finished("r1", "cw")
    assert not store.append(CW, completes="cw", legacy=("cw", "auc"))
    assert store.append(CLEAN, completes="clean")
    assert store.path.read_text().startswith(older)  # the older rows as they were
    again = ResultsStore(tmp_path)
    assert again.finished("r1", "cw", legacy=("cw", "auc")) and again.finished("r1", "clean")
    assert [(r.attack, r.metric) for r in again.rows()] == [("cw", "auc"), ("clean", "accuracy"), ("clean", "finished")]


def test_rows_appended_without_completes_are_a_finished_block(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    run(store)
    assert store.append([row("plugin", "score", 0.5)])
    assert [(r.attack, r.metric) for r in ResultsStore(tmp_path).rows()][-2:] == [("plugin", "score"), ("appended", "finished")]


def test_a_tail_torn_inside_its_last_field_is_not_read_nor_glued_onto(tmp_path: Path) -> None:
    """Two bytes cut off ``...,kde\\n`` leave ``...,kd``: all its fields there, but not its newline."""
    lines = ["dataset,preset,seed,defense,threat,attack,metric,value,n,run_id,time,detector",
             "digits,quick,0,pdm,gray,cw,auc,0.8,3,r1,t,kde", "digits,quick,0,pdm,gray,cw,accuracy,0.1,3,r1,t,kde"]
    path = tmp_path / "results.csv"
    path.write_text("".join(f"{line}\n" for line in lines)[:-2])
    store = ResultsStore(tmp_path)
    assert [(r.metric, r.detector) for r in store.rows()] == [("auc", "kde")]  # no phantom detector `kd`
    assert store.append(CLEAN, completes="clean")
    text = path.read_text()
    assert text.endswith("\n") and ",kd\n" not in text and "kddigits" not in text
    assert all(line.count(",") == 11 for line in text.splitlines())
    assert [(r.attack, r.metric) for r in ResultsStore(tmp_path).rows()] == [("cw", "auc"), ("clean", "accuracy"), ("clean", "finished")]


def one_line_disk_error(error: BaseException, path: Path, cause: str) -> None:
    message = str(error)
    assert isinstance(error, UserError) and isinstance(error, OSError), repr(error)
    assert "\n" not in message and str(path) in message and cause in message, message


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp" in p.name)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``os.write`` writes at most ``room[0]`` more bytes (one short write), then fails with ENOSPC."""
    room, write = [0], os.write

    def short_write(fd: int, data: bytes) -> int:
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        done = write(fd, bytes(data)[: room[0]])
        room[0] -= done
        return done

    monkeypatch.setattr(storage.os, "write", short_write)
    yield room


def test_an_append_to_a_full_disk_is_one_line_and_keeps_the_file_as_it_was(tmp_path: Path,
                                                                            full_disk: list[int]) -> None:
    store = ResultsStore(tmp_path)
    full_disk[0] = 10**6
    store.append(CLEAN, completes="clean")
    before = store.path.read_bytes()
    full_disk[0] = 25
    with pytest.raises(UserError) as raised:
        store.append(CW, completes="cw", legacy=("cw", "auc"))
    one_line_disk_error(raised.value, store.path, "the disk is full")
    assert store.path.read_bytes() == before and not leftovers(tmp_path)
    full_disk[0] = 10**6
    run(store)  # space again: the rerun adds the block
    assert [r.attack for r in ResultsStore(tmp_path).rows()].count("cw") == len(CW) + 1


def test_a_new_results_file_on_a_full_disk_is_not_created(tmp_path: Path, full_disk: list[int]) -> None:
    full_disk[0] = 40  # the header and no more
    with pytest.raises(UserError) as raised:
        ResultsStore(tmp_path).append(CLEAN, completes="clean")
    one_line_disk_error(raised.value, tmp_path / "results.csv", "the disk is full")
    assert not (tmp_path / "results.csv").exists() and not leftovers(tmp_path)
    with pytest.raises(UserError) as raised:
        atomic_write_text(tmp_path / "runs" / "r1.json", "{}")
    one_line_disk_error(raised.value, tmp_path / "runs" / "r1.json", "the disk is full")
    assert not leftovers(tmp_path)


@contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """A real short write: the kernel writes files up to ``size`` bytes, then fails the write (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_write_the_kernel_cuts_short_leaves_the_results_as_they_were(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    run(store)
    before = store.path.read_bytes()
    with file_size_limit(len(before) + 30), pytest.raises(UserError) as raised:
        store.append([row("fgsm-0.1", "auc", 0.6)] * 5, completes="fgsm-0.1")
    one_line_disk_error(raised.value, store.path, "File too large")
    assert store.path.read_bytes() == before


def test_an_array_cut_short_is_one_line_and_is_never_stored_torn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real short write: numpy itself writes a torn file here without a word (and the old code then moved it into
    place); the bytes are written by storage, which notices."""
    target = tmp_path / "adversarial" / "cw.npy"
    with file_size_limit(3000), pytest.raises(UserError) as raised:
        save_array(target, np.zeros((20, 48), dtype=np.float32))
    one_line_disk_error(raised.value, target, "File too large")
    assert not target.exists() and not leftovers(tmp_path)

    def failing_save(file: object, array: np.ndarray) -> None:
        raise OSError("3840 requested and 3040 written")

    monkeypatch.setattr(storage.np, "save", failing_save)
    with pytest.raises(UserError) as raised:
        save_array(target, np.zeros((20, 48), dtype=np.float32))
    one_line_disk_error(raised.value, target, "a short write (3840 requested and 3040 written): the disk is full")
    assert not target.exists() and not leftovers(tmp_path)


def test_a_checkpoint_torch_cannot_finish_is_one_line_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    import torch

    from pdm_bench.storage import atomic_save

    target = tmp_path / "models" / "model.pt"
    with file_size_limit(3000), pytest.raises(UserError) as raised:
        atomic_save({"weights": torch.zeros(2000)}, target)
    one_line_disk_error(raised.value, target, "torch.save failed")
    assert "is the disk full?" in str(raised.value) and not target.exists() and not leftovers(tmp_path)


def test_a_chunk_on_a_full_disk_fails_cleanly_and_the_rerun_makes_only_the_rest(tmp_path: Path,
                                                                                full_disk: list[int]) -> None:
    calls: list[int] = []
    room_after_first = [100]  # no room for the second chunk's 160 bytes of images

    def make(part: slice) -> np.ndarray:
        calls.append(part.start)
        full_disk[0] = 10**6 if part.start == 0 else room_after_first[0]
        return np.full((part.stop - part.start, 2), part.start, dtype=np.float32)

    path = tmp_path / "adversarial" / "cw.npy"
    with pytest.raises(UserError, match="the disk is full"):
        chunked_array(path, (50, 2), make, chunk_size=20, label="cw", log=lambda _: None)
    assert not leftovers(tmp_path) and len(list(path.with_name("cw.parts").glob("*.npy"))) == 1
    room_after_first[0] = 10**6
    array, _ = chunked_array(path, (50, 2), make, chunk_size=20, label="cw", log=lambda _: None)
    assert calls == [0, 20, 20, 40] and array[5, 0] == 0 and array[25, 0] == 20 and array[45, 0] == 40
