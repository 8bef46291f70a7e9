"""Local-filesystem helpers of the lake module."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecrec_lib.lake import replace_local_dir


def test_replace_local_dir_swaps_whole_directories(tmp_path: Path) -> None:
    final = tmp_path / "models" / "two_tower_seed0"

    def write(files: dict[str, str]):
        def fn(d: Path) -> None:
            for name, text in files.items():
                (d / name).write_text(text)
        return fn

    assert replace_local_dir(final, write({"a": "1", "blend.json": "{}"})) == final
    replace_local_dir(final, write({"a": "2"}))
    assert sorted(p.name for p in final.iterdir()) == ["a"]  # the old blend did not survive
    assert (final / "a").read_text() == "2"

    def fail(d: Path) -> None:
        (d / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_local_dir(final, fail)
    assert (final / "a").read_text() == "2"  # the earlier directory is untouched
    assert sorted(p.name for p in final.parent.iterdir()) == ["two_tower_seed0"]  # no temp left
