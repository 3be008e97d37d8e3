"""tools/export.py: a verified export with its parity report, and one-line errors."""

from __future__ import annotations

import pytest

from cli_helpers import cli_env, run_in_process, run_tool
from model_files import save_tiny_detector

CLASSES, IDS = ["circle", "square"], [2, 4]


def test_export_cli_writes_beside_the_checkpoint_and_prints_the_parity(tmp_path, monkeypatch, capsys):
    ckpt = save_tiny_detector(tmp_path / "run" / "best.pt", CLASSES, IDS)
    rc, stdout, err = run_in_process("export", ["--checkpoint", str(ckpt), "--format", "onnx", "--dynamic-batch"],
                                     monkeypatch, capsys)
    assert rc == 0, err
    path = tmp_path / "run" / "best.onnx"
    assert path.is_file() and stdout.startswith(f"wrote {path} (onnx, detect, tiny_ssd, 64 px, any batch")
    parity = [line for line in stdout.splitlines() if line.strip().startswith("parity")]
    assert len(parity) == 2 and all("max |diff|" in line and line.endswith("agree") for line in parity)


def test_export_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    import detkit.export.exporter as exporter

    ckpt = save_tiny_detector(tmp_path / "best.pt", CLASSES, IDS)
    rc, _, err = run_in_process("export", ["--checkpoint", str(tmp_path / "nope.pt"), "--format", "onnx"],
                                monkeypatch, capsys)
    assert rc == 2 and err == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist\n"
    other = save_tiny_detector(tmp_path / "other.pt", CLASSES, IDS, seed=3)
    real = exporter._build_graph
    monkeypatch.setattr(exporter, "_build_graph",
                        lambda model, meta: real(exporter.model_from_checkpoint(other).eval(), meta))
    rc, _, err = run_in_process("export", ["--checkpoint", str(ckpt), "--format", "torchscript"], monkeypatch, capsys)
    assert rc == 2 and "disagrees with PyTorch" in err and err.count("\n") == 1
    assert not (tmp_path / "best.torchscript.pt").exists()


@pytest.mark.slow
def test_export_runs_as_a_script(tmp_path):
    """tools/export.py as users run it (no sys.path edits: detkit is installed or on PYTHONPATH)."""
    ckpt = save_tiny_detector(tmp_path / "best.pt", CLASSES, IDS)
    proc = run_tool("export.py", "--checkpoint", str(ckpt), "--format", "torchscript", "--output",
                    str(tmp_path / "m.ts"), env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.ts").is_file() and "agree" in proc.stdout
