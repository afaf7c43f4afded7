"""Weights management against local files and a local HTTP server (nothing leaves the machine)."""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest

from threer_ros import cli
from threer_ros.models import load_model
from threer_ros.weights import (ENTRIES, WeightsError, download_url, download_weights,
                                find_weights, resolve_checkpoint, weights_dir)

PARITY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("THREER_ROS_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("THREER_ROS_OFFLINE", raising=False)


def _statuses(out: str) -> list[str]:
    return re.findall(r"^\w+\s+(present|missing)", out, flags=re.MULTILINE)


def test_list_reports_missing_then_present_weights(capsys):
    assert cli.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(weights_dir()) in out and _statuses(out) == ["missing"] * len(ENTRIES)
    shutil.copytree(PARITY / "fast3r" / "checkpoint", weights_dir() / ENTRIES["fast3r"].local_name)
    shutil.copy(PARITY / "pow3r" / "checkpoint.pth", weights_dir() / ENTRIES["pow3r"].local_name)
    assert cli.main(["weights", "list"]) == 0
    assert sorted(_statuses(capsys.readouterr().out)) == ["missing", "present", "present"]
    # what is found is what the backends load
    assert load_model(resolve_checkpoint("fast3r")) is not None
    assert find_weights("pow3r") == weights_dir() / ENTRIES["pow3r"].local_name


def test_an_incomplete_folder_is_not_taken_for_weights():
    folder = weights_dir() / ENTRIES["mast3r"].local_name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert find_weights("mast3r") is None


def test_offline_download_fails_at_once_and_says_where_to_put_files(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline.*config.json and model.safetensors"):
        download_weights("mast3r")
    assert cli.main(["weights", "download", "pow3r", "fast3r"]) == 1
    err = capsys.readouterr().err
    for name in ("pow3r", "fast3r"):             # each named weight is tried and explained
        assert str(weights_dir() / ENTRIES[name].local_name) in err


def test_missing_weights_explain_how_to_get_them():
    with pytest.raises(WeightsError, match="threer-ros weights download fast3r"):
        resolve_checkpoint("fast3r")
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_checkpoint("fast3r", "/nonexistent/checkpoint")


@pytest.fixture()
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_download_writes_the_file_atomically(local_server, tmp_path):
    root, base = local_server
    payload = (PARITY / "pow3r" / "checkpoint.pth").read_bytes()
    (root / "pow3r.pth").write_bytes(payload)
    target = tmp_path / "out" / "pow3r.pth"
    assert download_url(f"{base}/pow3r.pth", target, progress=False) == target
    assert target.read_bytes() == payload
    assert not target.with_name("pow3r.pth.part").exists()
    assert load_model(target) is not None


def test_a_failed_url_download_leaves_nothing_behind(local_server, tmp_path):
    _, base = local_server
    target = tmp_path / "out" / "missing.pth"
    with pytest.raises(WeightsError, match="missing.pth failed"):
        download_url(f"{base}/missing.pth", target, progress=False)
    assert not target.exists() and not target.with_name("missing.pth.part").exists()
