"""torchrun's error record of a bug: written once, where the fault guard caught it, and never moved later."""

from __future__ import annotations

import json
import time

import pytest
import torch.distributed as dist

from gen3c_dist.parallel import error_record


def _fail():
    raise RuntimeError("a bug")


def test_the_record_is_written_once_and_the_entry_point_keeps_it(tmp_path, monkeypatch):
    path = tmp_path / "error.json"
    monkeypatch.setenv(error_record.ERROR_FILE_ENV, str(path))
    try:
        _fail()
    except RuntimeError as exc:
        stamp = error_record.write_error_record(exc)
        first = path.read_text()
        caught = exc
    data = json.loads(first)["message"]
    assert data["message"] == "RuntimeError: a bug" and int(data["extraInfo"]["timestamp"]) == stamp
    assert "in _fail" in data["extraInfo"]["py_callstack"]

    @error_record.record
    def entry():
        raise caught

    with pytest.raises(RuntimeError):
        entry()
    assert path.read_text() == first  # the guard's record, untouched


def test_the_entry_point_records_a_bug_the_guard_never_saw(tmp_path, monkeypatch):
    path = tmp_path / "error.json"
    monkeypatch.setenv(error_record.ERROR_FILE_ENV, str(path))
    with pytest.raises(RuntimeError):
        error_record.record(_fail)()
    assert json.loads(path.read_text())["message"]["message"] == "RuntimeError: a bug"


def test_no_file_without_torchrun(monkeypatch):
    monkeypatch.delenv(error_record.ERROR_FILE_ENV, raising=False)
    try:
        _fail()
    except RuntimeError as exc:
        assert error_record.write_error_record(exc) is None


def test_a_stopped_rank_leaves_after_the_records_second():
    store = dist.HashStore()
    start = time.time()
    error_record.outlast_peer_record(store)  # no record: no wait
    assert time.time() - start < 0.1
    stamp = int(time.time())
    error_record.publish_record_time(store, stamp)
    error_record.outlast_peer_record(store)
    assert time.time() >= stamp + 1
