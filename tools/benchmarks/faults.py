"""Reliability: payloads against every loader, bad inputs against every CLI, faults injected into every kind of write.

Three tallies, each a row per case (``--json`` writes them all):

- payloads: pickled files that would run code (``builtins.exec``, ``os.system``, ``subprocess.call``, ``eval``)
  beside real weights, given to every place detkit reads weights or checkpoints. Executed must be 0, and each is
  refused with one line.
- bad inputs: arguments a user gets wrong, given to the CLIs: each must end with exit code 2 and exactly one
  ``error: ...`` line on stderr, no traceback.
- faults: a process killed mid-write, a full disk on each atomic writer, a crash between ``best.pt`` and
  ``last.pt``, a training run killed and resumed: the previous results must stay intact and consistent.

    python tools/bench.py faults              # about 10 minutes on 2 cores
    python tools/bench.py faults --json faults.json
"""

from __future__ import annotations

import argparse
import builtins
import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
TINY = ["--model", "timm:test_resnet", "--weights", "none", "--img-size", "32", "--batch-size", "4", "--epochs", "1",
        "--workers", "0", "--device", "cpu", "train.tensorboard=false", "train.progress=false",
        "data.stats_max_images=20", "data.scan_workers=1"]
TINY_DET = ["--task", "detect", "--model", "tiny_ssd", "--weights", "none", "--img-size", "64", "--batch-size", "2",
            "--epochs", "1", "--workers", "0", "--device", "cpu", "train.tensorboard=false", "train.progress=false",
            "data.stats_max_images=4", "data.scan_workers=1", "detect.grid_images=0"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every case as JSON")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work in DIR (kept) instead of a temp folder")


@dataclass
class Case:
    group: str  # payloads, bad inputs, faults
    name: str
    ok: bool
    detail: str


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
def _env(work: Path) -> dict[str, str]:
    home = work / "torch_home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "DETKIT_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(home),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _tool(tool: str, *args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / tool), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _fixtures(work: Path, env: dict[str, str]) -> dict[str, Path]:
    """Tiny classification and detection sets and a checkpoint trained on each (one epoch)."""
    from detkit.data.det_synthetic import make_shapes_detection
    from detkit.data.synthetic import make_shapes_classification

    cls, det = work / "cls", work / "det"
    make_shapes_classification(cls, n_train=12, n_val=6, n_test=0, size=32, seed=0, classes=("circle", "square"),
                               workers=1)
    make_shapes_detection(det, n_train=4, n_val=2, min_size=64, max_size=96, seed=0, workers=1)
    for name, data, flags in (("cls_run", cls, TINY), ("det_run", det, TINY_DET)):
        proc = _tool("finetune.py", "--data", str(data), "--output", str(work / name), *flags, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"fixture training {name} failed: {proc.stderr[-2000:]}")
    return {"cls": cls, "det": det, "cls_ckpt": work / "cls_run" / "best.pt", "det_ckpt": work / "det_run" / "best.pt"}


# ------------------------------------------------------------------------------------------------
# payloads
# ------------------------------------------------------------------------------------------------
def _payload_kinds(marker: Path) -> dict[str, Any]:
    code = f"open({str(marker)!r}, 'a').write('ran\\n')"

    class Exec:
        def __reduce__(self):
            return builtins.exec, (code,)

    class System:
        def __reduce__(self):
            return os.system, (f"{sys.executable} -c \"{code}\"",)

    class Call:
        def __reduce__(self):
            return subprocess.call, ([sys.executable, "-c", code],)

    class Eval:
        def __reduce__(self):
            return builtins.eval, (f"exec({code!r})",)

    return {"builtins.exec": Exec(), "os.system": System(), "subprocess.call": Call(), "builtins.eval": Eval()}


def _poison(path: Path, payload: Any, checkpoint: Path | None = None) -> Path:
    """A weights file (or a detkit checkpoint, when ``checkpoint`` is given) carrying ``payload`` beside tensors."""
    if checkpoint is not None:
        obj = torch.load(checkpoint, weights_only=True)
        obj["trainer"] = {**(obj.get("trainer") or {}), "note": payload}
    else:
        obj = {"state_dict": torchvision.models.resnet18(weights=None).state_dict(), "extra": payload}
    torch.save(obj, path)
    return path


def _one_line_exit_2(proc: subprocess.CompletedProcess) -> tuple[bool, str]:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(\w+: )?error: ", line)]  # make_dataset prefixes its name
    ok = proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr
    shown = errors[0] if errors else (lines[-1] if lines else f"exit {proc.returncode}, no message")
    return ok, f"exit {proc.returncode}: {shown[:160]}"


def payload_cases(work: Path, env: dict[str, str], fx: dict[str, Path]) -> list[Case]:
    """Every payload through every reader; the case passes when the payload did not run and was refused."""
    from detkit.models import create_classifier, create_detector, load_checkpoint, read_state_dict

    cases = []
    for kind in _payload_kinds(work / "probe"):
        marker = work / f"marker_{kind}"
        payload = _payload_kinds(marker)[kind]
        weights = _poison(work / f"poison_{kind}.pth", payload)
        ckpt = _poison(work / f"poison_{kind}_ckpt.pt", payload, checkpoint=fx["cls_ckpt"])
        det_ckpt = _poison(work / f"poison_{kind}_det.pt", payload, checkpoint=fx["det_ckpt"])
        library: dict[str, Callable[[], Any]] = {
            "read_state_dict(file)": lambda: read_state_dict(weights),
            "create_classifier(weights=file)": lambda: create_classifier("resnet18", 2, weights=str(weights)),
            "create_detector(weights=file)": lambda: create_detector("resnet18_ssd", 2, weights=str(weights)),
            "load_checkpoint(checkpoint)": lambda: load_checkpoint(ckpt),
        }
        for name, call in library.items():
            try:
                call()
                refused, detail = False, "loaded without error"
            except ValueError as err:
                refused, detail = True, " ".join(str(err).split())[:160]
            cases.append(Case("payloads", f"{kind} via {name}", refused and not marker.exists(), detail))
        cache = work / "torch_home" / "hub" / "checkpoints"
        cache.mkdir(parents=True, exist_ok=True)
        _poison(cache / "resnet18-f37072fd.pth", payload)
        clis = {
            "finetune.py --weights FILE": ("finetune.py", "--data", str(fx["cls"]), "--output", str(work / "p1"),
                                           *TINY, "--model", "resnet18", "--weights", str(weights)),
            "finetune.py --weights auto (poisoned torch cache)": (
                "finetune.py", "--data", str(fx["cls"]), "--output", str(work / "p2"), *TINY, "--model", "resnet18",
                "--weights", "auto"),
            "finetune.py --resume CKPT": ("finetune.py", "--data", str(fx["cls"]), "--output", str(work / "p3"),
                                          *TINY, "--resume", str(ckpt)),
            "eval.py --checkpoint CKPT": ("eval.py", "--checkpoint", str(ckpt), "--data", str(fx["cls"])),
            "detect.py --checkpoint CKPT": ("detect.py", "--checkpoint", str(det_ckpt), "--source",
                                            str(fx["det"] / "val"), "--output", str(work / "p4")),
        }
        for name, argv in clis.items():
            ok, detail = _one_line_exit_2(_tool(*argv, env=env))
            cases.append(Case("payloads", f"{kind} via {name}", ok and not marker.exists(), detail))
        (cache / "resnet18-f37072fd.pth").unlink()
    return cases


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def _bad_datasets(work: Path, fx: dict[str, Path]) -> dict[str, Path]:
    """Broken copies of the detection set: duplicate category names, an escaping file name, an empty split."""
    out = {}
    for name, change in (("dup_names", "dup"), ("escape", "escape")):
        root = work / name
        for split in ("train", "val"):
            (root / split).mkdir(parents=True, exist_ok=True)
            coco = json.loads((fx["det"] / split / "annotations.json").read_text())
            for img in coco["images"]:
                target = root / split / img["file_name"]
                if not target.exists():
                    target.symlink_to(fx["det"] / split / img["file_name"])
            if change == "dup":
                coco["categories"][1]["name"] = coco["categories"][0]["name"]
            else:
                coco["images"][0]["file_name"] = "../../outside.jpg"
            (root / split / "annotations.json").write_text(json.dumps(coco))
        out[name] = root
    empty = work / "empty_split"
    (empty / "train" / "a").mkdir(parents=True, exist_ok=True)
    (empty / "train" / "b").mkdir(parents=True, exist_ok=True)
    out["empty"] = empty
    not_weights = work / "photo.pth"
    not_weights.write_bytes(b"\xff\xd8\xff\xe0 not a torch file")
    out["not_weights"] = not_weights
    (work / "a_file").write_text("x")
    out["a_file"] = work / "a_file"
    return out


def bad_input_cases(work: Path, env: dict[str, str], fx: dict[str, Path]) -> list[Case]:
    """CLI arguments a user gets wrong: each must be one ``error:`` line and exit code 2."""
    bad = _bad_datasets(work, fx)
    cls, det, out = str(fx["cls"]), str(fx["det"]), str(work / "bad_out")
    train = ("finetune.py", "--data", cls, "--output", out, *TINY)
    train_det = ("finetune.py", "--data", det, "--output", out, *TINY_DET)
    cases = {
        "finetune: --data that does not exist": ("finetune.py", "--data", str(work / "nope"), "--output", out, *TINY),
        "finetune: --config that does not exist": (*train, "--config", str(work / "nope.yaml")),
        "finetune: unknown key optim.lrr": (*train, "optim.lrr=0.1"),
        "finetune: invalid value beside a flag for the same key": (*train, "train.epochs=abc"),
        "finetune: train.accumulate=0": (*train, "train.accumulate=0"),
        "finetune: detection --img-size 7": (*train_det, "--img-size", "7"),
        "finetune: --weights that is not a weights file": (*train, "--weights", str(bad["not_weights"])),
        "finetune: --resume a checkpoint of another task": (*train, "--resume", str(fx["det_ckpt"])),
        "finetune: --output inside a file": ("finetune.py", "--data", cls, "--output", str(bad["a_file"] / "run"),
                                             *TINY),
        "finetune: --output holding a run, no --resume": ("finetune.py", "--data", cls,
                                                          "--output", str(work / "cls_run"), *TINY),
        "finetune: --task detect on class folders": ("finetune.py", "--data", cls, "--output", out, *TINY_DET),
        "finetune: two categories with one name": ("finetune.py", "--data", str(bad["dup_names"]), "--output", out,
                                                   *TINY_DET),
        "finetune: a file name escaping the dataset": ("finetune.py", "--data", str(bad["escape"]), "--output", out,
                                                       *TINY_DET),
        "finetune: an empty split": ("finetune.py", "--data", str(bad["empty"]), "--output", out, *TINY),
        "eval: --checkpoint that does not exist": ("eval.py", "--checkpoint", str(work / "no.pt"), "--data", cls),
        "eval: --batch-size 0": ("eval.py", "--checkpoint", str(fx["cls_ckpt"]), "--data", cls, "--batch-size", "0"),
        "eval: --checkpoint that is not a checkpoint": ("eval.py", "--checkpoint", str(bad["not_weights"]),
                                                        "--data", cls),
        "detect: --img-size 0": ("detect.py", "--checkpoint", str(fx["det_ckpt"]), "--source", f"{det}/val",
                                 "--output", str(work / "d1"), "--img-size", "0"),
        "detect: --output inside --source": ("detect.py", "--checkpoint", str(fx["det_ckpt"]), "--source", f"{det}/val",
                                             "--output", f"{det}/val/annotated"),
        "detect: --source that does not exist": ("detect.py", "--checkpoint", str(fx["det_ckpt"]),
                                                 "--source", str(work / "nothing"), "--output", str(work / "d2")),
        "tune: --grid without values": ("tune.py", "--grid", "lr", "--output", str(work / "t1"), "--set",
                                        f"data.root={cls}"),
        "make_dataset: --n-train -1": ("make_dataset.py", "shapes", "--out", str(work / "m1"), "--n-train", "-1"),
        "convert_dataset: --dst inside --src": ("convert_dataset.py", "--from", "coco", "--to", "yolo",
                                                "--src", det, "--dst", f"{det}/converted"),
        "convert_dataset: a file name escaping the dataset": ("convert_dataset.py", "--from", "coco", "--to", "yolo",
                                                               "--src", str(bad["escape"]), "--dst",
                                                               str(work / "c1")),
    }
    results = []
    for name, argv in cases.items():
        ok, detail = _one_line_exit_2(_tool(*argv, env=env))
        results.append(Case("bad inputs", name, ok, detail))
    return results


# ------------------------------------------------------------------------------------------------
# faults
# ------------------------------------------------------------------------------------------------
_SLOW_WRITER = """
import sys, time
from detkit.io import atomic_write
def write(f):
    f.write(b"n" * (1 << 20)); f.flush()
    print("writing", flush=True); time.sleep(60)
atomic_write(sys.argv[1], write)
"""


def _killed_mid_write(work: Path, env: dict[str, str]) -> Case:
    path = work / "fault" / "last.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    from detkit.engine.checkpoint import atomic_save

    atomic_save({"epoch": 1}, path)
    before = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path)], env=env, stdout=subprocess.PIPE,
                             text=True)
    child.stdout.readline()  # the temporary file holds 1 MiB now
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    from detkit.io import remove_stale_temp_files

    removed = remove_stale_temp_files(path.parent)
    ok = path.read_bytes() == before and len(left) == 1 and len(removed) == 1
    return Case("faults", "SIGKILL while a checkpoint is written", ok,
                f"previous file intact: {path.read_bytes() == before}; temp files left {len(left)}, removed "
                f"at the next start {len(removed)}")


def _full_disk(work: Path) -> list[Case]:
    """ENOSPC at the flush of every kind of atomic write: the previous file stays, no temp file is left."""
    from detkit.data.images import write_image
    from detkit.engine.checkpoint import atomic_save
    from detkit.io import atomic_write_json, atomic_write_text
    from detkit.viz.figures import new_figure, save_figure

    folder = work / "full_disk"
    folder.mkdir(exist_ok=True)
    writers: dict[str, tuple[str, Callable[[Path, int], Any]]] = {
        "checkpoint (atomic_save)": ("last.pt", lambda p, v: atomic_save({"v": v}, p)),
        "metrics.json": ("metrics.json", lambda p, v: atomic_write_json(p, {"v": v})),
        "config.yaml / YOLO txt (text)": ("config.yaml", lambda p, v: atomic_write_text(p, f"v: {v}\n")),
        "annotated image (write_image)": ("a.jpg", lambda p, v: write_image(p, np.full((8, 8, 3), v, np.uint8))),
        "plot PNG (save_figure)": ("pr.png", lambda p, v: save_figure(new_figure(2, 2), p)),
    }
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    cases = []
    for name, (filename, write) in writers.items():
        path = folder / filename
        write(path, 1)
        before = path.read_bytes()
        os.fsync = no_space
        try:
            write(path, 2)
            raised = False
        except OSError:
            raised = True
        finally:
            os.fsync = real_fsync
        left = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
        ok = raised and path.read_bytes() == before and not left
        cases.append(Case("faults", f"full disk while writing {name}", ok,
                          f"raised {raised}, previous intact {path.read_bytes() == before}, temp files {len(left)}"))
    return cases


def _killed_training(work: Path, env: dict[str, str], fx: dict[str, Path]) -> Case:
    """SIGKILL a 3-epoch run once epoch 1 is saved; ``--resume auto`` must finish with a consistent run folder."""
    from detkit.models import load_checkpoint

    out = work / "killed_run"
    argv = [sys.executable, str(TOOLS / "finetune.py"), "--data", str(fx["cls"]), "--output", str(out), *TINY,
            "--epochs", "3"]
    child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and child.poll() is None:
        if (out / "last.pt").exists():
            break
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    resumed = _tool("finetune.py", "--data", str(fx["cls"]), "--output", str(out), *TINY, "--epochs", "3",
                    "--resume", "auto", env=env)
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    epochs = [row["epoch"] for row in metrics.get("epochs", [])]
    best = load_checkpoint(out / "best.pt") if (out / "best.pt").exists() else {}
    ok = (resumed.returncode == 0 and epochs == [1, 2, 3]
          and best.get("epoch") == (metrics.get("best") or {}).get("epoch"))
    return Case("faults", "training killed after epoch 1, then --resume auto", ok,
                f"resume exit {resumed.returncode}, epochs {epochs}, best.pt epoch {best.get('epoch')}, "
                f"metrics best epoch {(metrics.get('best') or {}).get('epoch')}")


def fault_cases(work: Path, env: dict[str, str], fx: dict[str, Path]) -> list[Case]:
    return [_killed_mid_write(work, env), *_full_disk(work), _killed_training(work, env, fx)]


# ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="detkit-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update({"DETKIT_OFFLINE": "1", "TORCH_HOME": str(work / "torch_home")})
    env = _env(work)
    start = time.perf_counter()
    fx = _fixtures(work, env)
    cases = payload_cases(work, env, fx) + bad_input_cases(work, env, fx) + fault_cases(work, env, fx)
    executed = sum(1 for p in work.glob("marker_*"))
    print(f"{'group':<11} {'case':<72} result")
    for c in cases:
        print(f"{c.group:<11} {c.name[:72]:<72} {'ok' if c.ok else 'FAILED'}  {c.detail}")
    print()
    for group in ("payloads", "bad inputs", "faults"):
        rows = [c for c in cases if c.group == group]
        print(f"{group}: {sum(c.ok for c in rows)} of {len(rows)} handled")
    print(f"payloads executed: {executed} (must be 0); {time.perf_counter() - start:.0f} s; work folder {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": [asdict(c) for c in cases], "payloads_executed": executed},
                                              indent=1) + "\n")
    return 0 if executed == 0 and all(c.ok for c in cases) else 1
