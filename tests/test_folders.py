"""Folder runs of ``bcrn-fast upscale``: planning rules, --recursive, --skip-existing, --keep-going."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcrn_fast.cli import main
from bcrn_fast.jobs import Job, plan_jobs
from bcrn_fast.validation import InputError
from tests.test_cli import REF, expected_sr, one_error_line, save_rgb, weights  # noqa: F401 - weights is a fixture


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _close_to_reference(weights: Path, src: Path, out: Path) -> bool:  # noqa: F811
    got = np.array(Image.open(out)).astype(int)
    want = expected_sr(weights, src).astype(int)
    return got.shape == want.shape and int(np.abs(got - want).max()) <= 1


# ---------------------------------------------------------------- planning (no model)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_plan_names_and_mirrors_the_tree(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for rel in ("a.png", "clip.MKV", "old.avi", "sub/b.jpg", "sub/deep/c.bmp", "sub/.hidden.png", "notes.txt"):
        _touch(src / rel)
    out = tmp_path / "out"
    flat, _ = plan_jobs([src], out, 4)
    assert flat == [
        Job(src / "a.png", out / "a_x4.png", "image"),
        Job(src / "clip.MKV", out / "clip_x4.MKV", "video"),
        Job(src / "old.avi", out / "old_x4.mp4", "video"),  # avi cannot take the default H.264: mp4
    ]
    deep, _ = plan_jobs([src], out, 2, recursive=True, suffix="mkv")
    assert [(j.src.relative_to(src), j.dst.relative_to(out)) for j in deep] == [
        (Path("a.png"), Path("a_x2.png")),
        (Path("clip.MKV"), Path("clip_x2.mkv")),
        (Path("old.avi"), Path("old_x2.mkv")),
        (Path("sub/b.jpg"), Path("sub/b_x2.png")),
        (Path("sub/deep/c.bmp"), Path("sub/deep/c_x2.png")),
    ]
    one, _ = plan_jobs([src / "clip.MKV"], tmp_path / "named.mov", 2)  # one video, -o names the file
    assert one == [Job(src / "clip.MKV", tmp_path / "named.mov", "video")]


def test_plan_never_reads_its_own_outputs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _touch(src / "a.png")
    _touch(src / "out" / "a_x2.png")  # a previous run's output, inside the input tree
    jobs, _ = plan_jobs([src], src / "out", 2, recursive=True, overwrite=True)
    assert [j.src for j in jobs] == [src / "a.png"]


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda d: [d / "absent.png"], {}, "absent.png: no such file or folder"),
        (lambda d: [_touch(d / "e" / "x.txt").parent], {}, "folder holds no .png/.jpg/.jpeg/.bmp images or videos"),
        (lambda d: [_touch(d / "a.png"), _touch(d / "a.bmp")], {}, "would both be written to"),
        (lambda d: [_touch(d / "a.png")], {"skip_existing": True, "overwrite": True}, "exclude each other"),
        (lambda d: [_touch(d / "a.png"), _touch(d / "o" / "a_x2.png")], {"overwrite": True}, "is an input image"),
        (lambda d: [_touch(d / "a.png"), _touch(d / "o" / "a_x2.png").with_name("z.png")], {}, "already exists"),
    ],
)
def test_plan_errors_are_one_line(tmp_path: Path, make, kwargs: dict, message: str) -> None:  # noqa: ANN001
    inputs = [p for p in make(tmp_path) if p.exists()]  # a path that does not exist is the missing-input case
    with pytest.raises(InputError, match=message) as info:
        plan_jobs(inputs or make(tmp_path), tmp_path / "o", 2, **kwargs)
    assert "\n" not in str(info.value)


def test_plan_skip_existing(tmp_path: Path) -> None:
    a, b = _touch(tmp_path / "in" / "a.png"), _touch(tmp_path / "in" / "b.png")
    _touch(tmp_path / "o" / "b_x2.png")
    run, skipped = plan_jobs([a.parent], tmp_path / "o", 2, skip_existing=True)
    assert [j.src for j in run] == [a] and [j.src for j in skipped] == [b]


# ---------------------------------------------------------------- the CLI on a tree with bad files


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    save_rgb(src / "a.png", 16, 17, seed=1)
    save_rgb(src / "sub" / "b.png", 18, 16, seed=2)
    save_rgb(src / "sub" / "deeper" / "c.jpg", 16, 17, seed=3)  # same size as a.png: batched with it
    save_rgb(src / "sub" / "deeper" / "d.bmp", 9, 20, seed=4)  # below 15x15: padded
    (src / "sub" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    good = save_rgb(tmp_path / "good.png", 40, 40, seed=5)
    (src / "sub" / "cut.png").write_bytes(good.read_bytes()[:200])  # header fine, pixels truncated
    (src / "notes.txt").write_text("not an image")
    return src


def test_recursive_keep_going_skip_existing(tree: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    out = tree.parent / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "b_x2.png").write_bytes(b"precious")  # exists: skipped, untouched
    args = ["upscale", str(tree), "-o", str(out), "--weights", str(weights), *REF, "--no-progress"]
    code = main([*args, "--recursive", "--keep-going", "--skip-existing", "--batch", "2"])
    captured = capsys.readouterr()
    assert code == 1  # something failed
    assert _all_files(out) == ["a_x2.png", "sub/b_x2.png", "sub/deeper/c_x2.png", "sub/deeper/d_x2.png"]
    assert (out / "sub" / "b_x2.png").read_bytes() == b"precious"
    assert _close_to_reference(weights, tree / "a.png", out / "a_x2.png")
    assert _close_to_reference(weights, tree / "sub" / "deeper" / "c.jpg", out / "sub" / "deeper" / "c_x2.png")
    with Image.open(
        out / "sub" / "deeper" / "d_x2.png"
    ) as im:  # padded and cropped back (tests/test_cli.py checks pixels)
        assert im.size == (40, 18)
    err = captured.err
    assert f"bcrn-fast: failed: {tree / 'sub' / 'bad.png'}: not a readable image" in err
    assert f"bcrn-fast: failed: {tree / 'sub' / 'cut.png'}: cannot read image" in err
    assert "d.bmp: 20x9 is below 15x15; reflect-padded" in err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("bcrn-fast: 3 written; 1 skipped (output exists); 2 failed: ")
    assert sorted(captured.out.split()) == sorted(
        str(out / r) for r in ("a_x2.png", "sub/deeper/c_x2.png", "sub/deeper/d_x2.png")
    )

    # a second run finds everything done except the two bad files
    assert main([*args, "--recursive", "--keep-going", "--skip-existing"]) == 1
    assert "0 written; 4 skipped (output exists); 2 failed" in capsys.readouterr().err
    # without --keep-going the first bad file stops the run before any work, one line, exit 2
    assert main([*args, "--recursive", "--overwrite"]) == 2
    assert "bad.png: not a readable image" in one_error_line(capsys.readouterr().err)
    # without --recursive only the top level is seen
    assert main([*args, "--overwrite"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "a_x2.png")]
