"""ablations.files: the one atomic writer every results file, table, figure and report uses."""
from __future__ import annotations

import pytest

from ablations import files


def test_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "a.md"
    assert files.write_text(p, "one") == str(p)
    files.write_text(p, "two ü")
    assert p.read_text(encoding="utf-8") == "two ü"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.md"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    p = tmp_path / "b.parquet"
    files.write_bytes(p, b"old")

    def half(tmp):
        open(tmp, "wb").write(b"ne")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(p, half)
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["b.parquet"]
