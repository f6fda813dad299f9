import pytest

from scripts.project_util import atomic_output, atomic_write_text


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_failure_inside_the_block_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"earlier")
    with pytest.raises(RuntimeError):
        with atomic_output(path, "wb") as output:
            output.write(b"half of the new")
            raise RuntimeError("crash")
    assert path.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
