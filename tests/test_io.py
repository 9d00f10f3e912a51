"""nmt.io: outputs are complete or absent, with the umask's permissions; one sha256."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from nmt.errors import UserError
from nmt.io import (
    PARTIAL_SUFFIX,
    RETIRED_SUFFIX,
    atomic_directory,
    atomic_file,
    remove_stale_partials,
    sha256_file,
    write_text,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_file_gets_the_umask_permissions_and_leaves_no_partial(tmp_path, umask_022):
    write_text(tmp_path / "out" / "report.json", "{}\n")
    assert (tmp_path / "out" / "report.json").read_text() == "{}\n"
    assert _mode(tmp_path / "out" / "report.json") == 0o644
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"good")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_file(path) as file:
        file.write(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_writing_over_a_directory_or_under_a_file_names_the_path(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="taken: is a directory"):
        write_text(tmp_path / "taken", "x")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UserError, match="plain/out.txt: cannot write there"):
        write_text(tmp_path / "plain" / "out.txt", "x")


def test_a_directory_replaces_the_previous_one_whole(tmp_path, umask_022):
    target = tmp_path / "bundle"
    with atomic_directory(target) as partial:
        (partial / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as partial:
        (partial / "a").write_text("2")
        raise RuntimeError("killed")
    assert (target / "a").read_text() == "1"
    (tmp_path / f"bundle{RETIRED_SUFFIX}").mkdir()  # a swap interrupted between its renames
    with atomic_directory(target) as partial:
        (partial / "b").write_text("3")
        (partial / "b").chmod(0o600)  # as safetensors or mkstemp leave a file
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert _mode(target) == 0o755 and _mode(target / "b") == 0o644


def test_stale_partials_of_files_and_directories_are_removed(tmp_path):
    (tmp_path / f".last.ckpt.abc{PARTIAL_SUFFIX}").write_bytes(b"half")
    (tmp_path / f".corpus.xyz{PARTIAL_SUFFIX}").mkdir()
    (tmp_path / "best.ckpt").write_bytes(b"kept")
    removed = remove_stale_partials(tmp_path)
    assert [p.name for p in removed] == [
        f".corpus.xyz{PARTIAL_SUFFIX}",
        f".last.ckpt.abc{PARTIAL_SUFFIX}",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


def test_sha256_matches_hashlib_and_names_a_missing_file(tmp_path):
    data = bytes(range(256)) * 5000  # more than one read chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    with pytest.raises(UserError, match="nothing: no such file"):
        sha256_file(tmp_path / "nothing")
