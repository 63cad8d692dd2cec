"""ablations.storage against a real S3-compatible server on loopback (moto)."""
from __future__ import annotations

import pytest

from ablations import files, storage
from ablations.spec import SpecError


def test_write_read_list_exists_delete(s3):
    st = storage.check(f"s3://{s3}/pre/fix")
    assert not st.exists("a/b.txt")
    st.write("a/b.txt", b"hello")
    st.write("a/c/d.bin", bytes(range(256)) * 1000)
    assert st.exists("a/b.txt") and st.read("a/b.txt") == b"hello"
    listed = st.list("a")
    assert sorted(listed) == ["a/b.txt", "a/c/d.bin"]
    assert listed["a/c/d.bin"][0] == 256000
    st.delete("a/b.txt")
    st.delete("a/b.txt")  # gone already: no error
    assert not st.exists("a/b.txt") and st.list("nothing") == {}


def test_upload_and_download_folders(s3, tmp_path):
    st = storage.check(f"s3://{s3}/p")
    src = tmp_path / "src"
    (src / "trials" / "t1").mkdir(parents=True)
    (src / "trials" / "t1" / "row.json").write_text("{}")
    (src / "spec.json").write_text("{\"x\": 1}")
    (src / ".lock").write_text("held")
    assert st.upload_dir(src, "run", skip={".lock"}) == 2
    assert sorted(st.list("run")) == ["run/spec.json", "run/trials/t1/row.json"]
    dst = tmp_path / "dst"
    assert st.download("run", dst) == 2
    assert (dst / "trials" / "t1" / "row.json").read_text() == "{}"
    assert st.download("run", dst) == 0  # unchanged: nothing fetched again
    st.write("run/spec.json", b"{\"x\": 22}")
    assert st.download("run", dst) == 1 and (dst / "spec.json").read_text() == "{\"x\": 22}"


def test_mirror_puts_written_and_moved_files(s3, tmp_path):
    st = storage.check(f"s3://{s3}/m")
    root = tmp_path / "stage" / "run"
    with storage.Mirror(st, root, "run", only={"trials"}):
        files.write_text(root / "trials" / "t" / "row.json", "{\"status\": \"error\"}")
        files.write_text(root / "spec.json", "not mirrored")
        files.write_text(tmp_path / "elsewhere.txt", "not mirrored")
        (root / "trials" / "t" / "errors").mkdir()
        files.move(root / "trials" / "t" / "row.json", root / "trials" / "t" / "errors" / "1.json")
        files.write_text(root / "trials" / "t" / "gone.txt", "removed")
        files.remove(root / "trials" / "t" / "gone.txt")
    files.write_text(root / "trials" / "t" / "after.txt", "mirror left")
    assert sorted(st.list()) == ["run/trials/t/errors/1.json"]
    assert files.WATCHERS == []


def test_tune_storage_is_on_the_store(s3):
    from ablations.spec import AblationSpec
    spec = AblationSpec(storage=f"s3://{s3}/x", name="n")
    path, fs = storage.tune_storage(spec)
    assert path == f"{s3}/x/n/ray" and fs is not None
    local = AblationSpec(out="/o", name="n")
    assert storage.tune_storage(local) == ("/o/n/ray", None)


@pytest.mark.parametrize("uri, says", [
    ("ftp://host/x", "unknown scheme 'ftp'; valid: a local folder, s3://"),
    ("s3://", "no bucket named"),
])
def test_bad_uris_are_one_line(uri, says):
    with pytest.raises(SpecError) as e:
        storage.check(uri)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_missing_bucket_unreachable_and_no_credentials(s3, monkeypatch):
    with pytest.raises(SpecError, match="bucket 'nosuch' does not exist"):
        storage.check("s3://nosuch/p")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(SpecError, match="cannot reach the store at http://127.0.0.1:9"):
        storage.check(f"s3://{s3}/p")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(SpecError, match="no S3 credentials"):
        storage.check(f"s3://{s3}/p")


def test_a_local_folder_is_a_store_too(tmp_path):
    st = storage.Store(str(tmp_path / "st"))
    st.write("a/b.txt", b"x")
    assert st.exists("a/b.txt") and st.read("a/b.txt") == b"x"
    assert list(st.list("a")) == ["a/b.txt"] and not list((tmp_path / "st" / "a").glob(".*"))
    st.delete("a/b.txt")
    assert not st.exists("a/b.txt")
