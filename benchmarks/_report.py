"""What every benchmark script records next to its numbers, and how it writes them.

Shared by the scripts in this folder: the machine and code the numbers came
from, the exact command, the JSON file, and the script's own delimited
section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = REPO_ROOT / "docs" / "results.md"

DATA_ROOT_ENV = "AVALANCHE_NEUROMOD_DATA"
"""The package's data-root variable (``avalanche_neuromod.benchmarks.DATA_ROOT_ENV``),
repeated so that parsing arguments does not import torch and Avalanche."""

__all__ = ["REPO_ROOT", "RESULTS_MD", "DATA_ROOT_ENV", "add_dataset_root_argument", "check_mnist_root",
           "machine_info", "git_info", "command_line", "update_results_md", "write_json"]


def add_dataset_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--dataset-root``, defaulting to ``$AVALANCHE_NEUROMOD_DATA``."""
    parser.add_argument("--dataset-root", default=os.environ.get(DATA_ROOT_ENV),
                        help=f"folder holding MNIST/raw/*.gz (default: ${DATA_ROOT_ENV}).")


def check_mnist_root(parser: argparse.ArgumentParser, root: Optional[str]) -> Path:
    """The data root as a path, or a parser error naming what is missing and the fix.

    :param parser: reports the error (and exits).
    :param root: the ``--dataset-root`` value.
    """
    if not root:
        parser.error(
            f"no MNIST folder: pass --dataset-root DIR or set {DATA_ROOT_ENV}; DIR must hold "
            f"MNIST/raw/train-images-idx3-ubyte.gz (torchvision layout)."
        )
    path = Path(root).expanduser()
    raw = path / "MNIST" / "raw"
    if not any(raw.glob("train-images-idx3-ubyte*")):
        parser.error(
            f"MNIST not found under {path}: expected {raw}/train-images-idx3-ubyte.gz and the other "
            f"three files (torchvision layout)."
        )
    return path


def git_info() -> Dict[str, Any]:
    """The commit, and the uncommitted edits the numbers also belong to."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout

    return {"commit": git("rev-parse", "HEAD").strip(), "dirty_files": git("status", "--porcelain").splitlines()}


def machine_info() -> Dict[str, Any]:
    """CPU, memory, library versions, load and code version of this run."""
    import avalanche
    import psutil
    import torch

    import avalanche_neuromod

    cpuinfo = Path("/proc/cpuinfo")
    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    ) if cpuinfo.exists() else platform.processor()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_total_bytes": psutil.virtual_memory().total,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "avalanche_neuromod": avalanche_neuromod.__version__,
        "gc_freeze_env": os.environ.get("AVALANCHE_NEUROMOD_GC_FREEZE", "unset (freeze on)"),
        "load_average_at_start": list(os.getloadavg()),
        "git": git_info(),
    }


def command_line() -> str:
    """The command that is running, with the interpreter relative when it can be."""
    python = sys.executable
    with contextlib.suppress(ValueError):
        if Path(python).absolute().is_relative_to(Path.cwd()):
            python = os.path.relpath(python)
    return shlex.join([python, *sys.argv])


def update_results_md(section: str, start: str, end: str, path: Path = RESULTS_MD) -> None:
    """Replace the section between the ``start`` and ``end`` markers; other scripts own the rest.

    :param section: the new section, markers included.
    :param start: the opening HTML comment.
    :param end: the closing HTML comment.
    :param path: the markdown file.
    """
    text = path.read_text() if path.exists() else (
        "# Measured results\n\nNumbers measured by the scripts in `benchmarks/`; "
        "each script rewrites only its own section.\n"
    )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_json(result: Dict[str, Any], path: Path) -> None:
    """Write ``result`` atomically (a killed run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
