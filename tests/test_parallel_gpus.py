"""``--jobs N`` on a machine with several GPUs: each running step sees one GPU of its own (round robin)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pdm_bench import steps as steps_module
from pdm_bench.steps import Slots, Step, gpu_of_slot, run_parallel, visible_gpus


@pytest.mark.parametrize(("gpus", "expected"), [
    ([], [None, None, None, None]),
    (["0"], ["0", "0", "0", "0"]),
    (["0", "1"], ["0", "1", "0", "1"]),
    (["0", "1", "2", "3"], ["0", "1", "2", "3"]),
    (["4", "6"], ["4", "6", "4", "6"]),  # the visible devices' own names, as CUDA_VISIBLE_DEVICES lists them
])
def test_each_slot_gets_a_gpu_round_robin(gpus: list[str], expected: list[str | None]) -> None:
    assert [gpu_of_slot(slot, gpus) for slot in range(4)] == expected


def test_a_finished_step_frees_its_slot_for_the_next() -> None:
    slots = Slots(2)
    first, second = slots.take(), slots.take()
    slots.give_back(first)
    assert (first, second, slots.take()) == (0, 1, 0)


@pytest.mark.parametrize(("listed", "expected"), [("2,3", ["2", "3"]), ("", []), ("-1", []), ("0", ["0"])])
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, listed: str, expected: list[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == expected


@pytest.mark.parametrize("gpus", [["0", "1"], ["0", "1", "2", "3"]])
def test_steps_running_at_once_see_different_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpus: list[str]) -> None:
    running: dict[str, int] = {}
    most: dict[str, int] = {}  # the most steps ever running at once on each device
    seen: list[tuple[str, frozenset[str]]] = []
    lock = threading.Lock()

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        device = kwargs["env"]["CUDA_VISIBLE_DEVICES"]
        with lock:
            running[device] = running.get(device, 0) + 1
            most[device] = max(most.get(device, 0), running[device])
            seen.append((device, frozenset(d for d, n in running.items() if n)))
        time.sleep(0.05)
        with lock:
            running[device] -= 1
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(steps_module.subprocess, "run", fake_run)
    steps = [Step(f"step {i}", ("list",), lambda: None) for i in range(6)]
    assert run_parallel(steps, jobs=len(gpus), log_dir=tmp_path, echo=lambda _: None, gpus=gpus) == []
    assert {device for device, _ in seen} == set(gpus) and all(others <= set(gpus) for _, others in seen)
    assert any(len(others) > 1 for _, others in seen)  # steps did run at once ...
    assert set(most.values()) == {1}  # ... never two on one device
