"""Atomic writers of volnb.core: what they create respects the umask (not mkstemp's 0600 / mkdtemp's 0700),
the data is flushed before the replace and the folder after it, and a failure leaves the previous content."""
import os
import stat
from contextlib import contextmanager

import pandas as pd
import pytest

import volnb.core as core
from volnb.core import atomic_path, make_temp_dir, make_temp_file, replace_dir, save_table, write_json, write_parquet, write_text


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try: yield
    finally: os.umask(old)


def mode(p): return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_created_files_and_dirs_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    with umask(mask):
        made = [write_text(tmp_path / "new/a.txt", "x"), write_json(tmp_path / "b.json", {"a": 1}),
                write_parquet(tmp_path / "c.parquet", pd.DataFrame({"a": [1]})),
                save_table(pd.DataFrame({"a": [1]}), tmp_path / "reports", "exp", "t"), make_temp_file(tmp_path)]
        dirs = [tmp_path / "new", tmp_path / "reports/tables/exp", make_temp_dir(tmp_path)]
        plain = tmp_path / "plain.txt"
        plain.write_text("x")                                     # what `open` makes under the same umask
    assert [mode(p) for p in made] == [file_mode] * len(made) == [mode(plain)] * len(made)
    assert [mode(d) for d in dirs] == [dir_mode] * len(dirs)


def test_replacing_a_file_gives_it_the_umask_mode(tmp_path):
    p = tmp_path / "state.json"
    with umask(0o077): write_json(p, {"v": 1})
    assert mode(p) == 0o600
    with umask(0o022): write_json(p, {"v": 2})
    assert mode(p) == 0o644 and p.read_text() == '{\n  "v": 2\n}\n'


def test_previous_content_survives_a_failure_mid_write(tmp_path):
    p = write_text(tmp_path / "t.csv", "old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(p) as tmp:
            tmp.write_text("half a li")
            raise RuntimeError("disk on fire")
    assert p.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == ["t.csv"]


def test_previous_content_survives_a_failed_flush(tmp_path, monkeypatch):
    p = write_text(tmp_path / "t.csv", "old\n")
    def fail(path): raise OSError(5, "Input/output error")
    monkeypatch.setattr(core, "fsync_file", fail)
    with pytest.raises(OSError, match="Input/output error"): write_text(p, "new\n")
    assert p.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == ["t.csv"]


def test_flush_file_then_replace_then_flush_folder(tmp_path, monkeypatch):
    calls, fsync, replace = [], os.fsync, os.replace
    def rec_fsync(fd):
        calls.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        return fsync(fd)
    def rec_replace(a, b):
        calls.append("replace")
        return replace(a, b)
    monkeypatch.setattr(os, "fsync", rec_fsync)
    monkeypatch.setattr(os, "replace", rec_replace)
    write_text(tmp_path / "x.txt", "x")
    assert calls == ["fsync file", "replace", "fsync dir"]
    calls.clear()
    src = make_temp_dir(tmp_path)
    replace_dir(src, tmp_path / "d")
    assert calls == ["fsync dir"] and (tmp_path / "d").is_dir()


def test_replace_dir_keeps_the_old_dir_when_the_move_fails(tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/x").write_text("old")
    with pytest.raises(FileNotFoundError): replace_dir(tmp_path / "missing", tmp_path / "dest")
    assert (tmp_path / "dest/x").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_temp_names_do_not_collide(tmp_path):
    names = {make_temp_file(tmp_path, prefix=".a.").name for _ in range(200)} | {make_temp_dir(tmp_path).name for _ in range(50)}
    assert len(names) == 250 and all(n.startswith(".a.") and n.endswith(".tmp") for n in list(names) if n.startswith(".a."))


def test_time_conversions_are_defined_once():
    "utc_ms was written twice, differently (live, refresh): the data refresh and the live feed now share volnb.core's."
    import volnb.refresh, volnb.replay
    assert volnb.refresh.utc_ms is core.utc_ms and volnb.replay.utc_ms is core.utc_ms
    assert volnb.refresh.utc_timestamp is core.utc_timestamp and volnb.refresh.ms_text is core.ms_text
    assert core.utc_ms("2021-04-04 20:00") == 1617566400000 and core.utc_ms(None) is None
    assert core.utc_ms(pd.Timestamp("2021-04-04 22:00", tz="Europe/Berlin")) == 1617566400000
