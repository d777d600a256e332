"""fwtest.cache: where entries live, what their keys depend on, and that a bad entry is no entry."""

from __future__ import annotations

import os

import pytest

from fwtest import cache


@pytest.fixture(autouse=True)
def _private(tmp_path, monkeypatch):
    monkeypatch.delenv("FWTEST_CACHE", raising=False)
    monkeypatch.delenv("FWTEST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_directory_precedence(tmp_path, monkeypatch):
    assert cache.directory() == tmp_path / "xdg" / "fwtest"
    monkeypatch.setenv("FWTEST_CACHE_DIR", str(tmp_path / "ci-cache"))
    assert cache.directory() == tmp_path / "ci-cache"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("FWTEST_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.directory() == tmp_path / "home" / ".cache" / "fwtest"


def test_round_trip_and_bad_entries_are_no_entries():
    cache.store("flows", "k1", [1, 2, 3])
    assert cache.load("flows", "k1") == [1, 2, 3]
    assert cache.load("flows", "k2") is None
    cache.path("flows", "k1").write_bytes(b"\x80\x05truncated")
    assert cache.load("flows", "k1") is None
    assert not list(cache.directory().glob(".*.tmp"))       # no temporary file left behind


def test_off_reads_and_writes_nothing(monkeypatch):
    cache.store("flows", "k1", "kept")
    monkeypatch.setenv("FWTEST_CACHE", "0")
    assert cache.load("flows", "k1") is None
    cache.store("flows", "k2", "not kept")
    assert not cache.path("flows", "k2").exists()


def test_each_kind_keeps_its_newest_entries():
    for i in range(cache.ENTRIES + 3):
        cache.store("classes", f"c{i}", i)
        os.utime(cache.path("classes", f"c{i}"), (1000 + i, 1000 + i))
    cache.store("flows", "f", "other kind")
    cache.store("classes", "newest", "n")
    left = {p.stem for p in cache.directory().glob("classes-*.pickle")}
    assert len(left) == cache.ENTRIES and "classes-newest" in left and "classes-c0" not in left
    assert cache.load("flows", "f") == "other kind"


def test_keys_depend_on_the_inputs_and_on_fwtest_source(tmp_path, monkeypatch):
    assert cache.key("flows", 0) == cache.key("flows", 0)
    assert cache.key("flows", 0) != cache.key("flows", 1)
    source = tmp_path / "pkg"
    source.mkdir()
    (source / "mod.py").write_text("X = 1\n")
    monkeypatch.setattr(cache, "PACKAGE", source)
    cache.code_identity.cache_clear()
    try:
        before = cache.key("flows", 0)
        (source / "mod.py").write_text("X = 2\n")        # an edited fwtest is another key
        cache.code_identity.cache_clear()
        assert cache.key("flows", 0) != before
    finally:
        cache.code_identity.cache_clear()
