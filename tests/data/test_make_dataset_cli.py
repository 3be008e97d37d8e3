"""End-to-end tests of tools/make_dataset.py: generation, idempotent reruns, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from detkit.data.classification import ImageFolderDataset

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "make_dataset.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_dataset_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tool, argv: list[str]) -> int:
    return tool.main(tool.get_args_parser().parse_args(argv))


def test_cli_generates_a_loadable_dataset_and_reruns_idempotently(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tool = _load_tool()
    out = tmp_path / "shapes"
    argv = ["shapes", "--task", "classify", "--out", str(out), "--n-train", "12", "--n-val", "6", "--size", "32"]
    assert _run(tool, [*argv, "--seed", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("shapes/classify: 12 train + 6 val images, 32 px, 6 classes, seed 4") and "\n" not in line
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["seed"] == 4 and meta["splits"] == {"train": 12, "val": 6}
    train = ImageFolderDataset(out, "train")
    val = ImageFolderDataset(out, "val", classes=train.classes)
    assert (len(train), len(val)) == (12, 6) and train[0][0].shape == (3, 32, 32)

    assert _run(tool, [*argv, "--seed", "4"]) == 0
    assert "already up to date" in capsys.readouterr().out

    assert _run(tool, [*argv, "--seed", "5"]) == 2  # other settings without --overwrite
    err = capsys.readouterr().err.strip()
    assert err.startswith("make_dataset: error:") and "--overwrite" in err and "\n" not in err
    assert _run(tool, [*argv, "--seed", "5", "--overwrite"]) == 0
    assert json.loads((out / "meta.json").read_text())["seed"] == 5


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--n-train", "-3"], "n_train must be a non-negative int"),
        (["--size", "8"], "size must be an int >= 32"),
        (["--classes", "circle,blob"], "classes must be"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], match: str
) -> None:
    tool = _load_tool()
    assert _run(tool, ["shapes", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("make_dataset: error:") and match in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_cli_unknown_task_is_rejected_by_the_parser(capsys: pytest.CaptureFixture) -> None:
    tool = _load_tool()
    with pytest.raises(SystemExit) as info:
        tool.get_args_parser().parse_args(["shapes", "--task", "segment"])
    assert info.value.code == 2 and "invalid choice: 'segment'" in capsys.readouterr().err


def test_cli_runs_as_a_script(tmp_path: Path) -> None:
    out = tmp_path / "s"
    cmd = [sys.executable, str(TOOL), "shapes", "--out", str(out), "--n-train", "6", "--n-val", "6", "--size", "32",
           "--classes", "square,circle", "--n-test", "2"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "6 train + 6 val + 2 test images" in done.stdout
    assert (out / "classes.txt").read_text().split() == ["circle", "square"]
    assert sorted(p.name for p in (out / "test").iterdir()) == ["circle", "square"]
