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


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o027, 0o640)])
def test_files_get_the_mode_the_umask_gives(tmp_path, mask, mode):
    import os
    old = os.umask(mask)
    try:
        assert files.umask() == mask
        for i, write in enumerate((lambda p: files.write_text(p, "x"),
                                   lambda p: files.write_bytes(p, b"x"),
                                   lambda p: files.atomic_write(p, lambda t: open(t, "w").write("x")))):
            p = tmp_path / f"f{i}"
            write(p)
            assert (p.stat().st_mode & 0o777) == mode, oct(p.stat().st_mode)
    finally:
        os.umask(old)
