"""What ``pip install avalanche-neuromod`` gives a user, checked on the built wheel.

The test environment installs the package in editable mode, which imports
straight from the source tree and so hides a module that the wheel leaves
out. These tests build the wheel from a copy of the sources, compare its
contents and metadata with the tree, and train a CRWN model in a fresh
interpreter that imports the package from the unpacked wheel only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import avalanche_neuromod

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, where installed
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "avalanche_neuromod"

pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools (the dev extra)")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built, without network, from a copy of the files a build reads."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         str(src), "--wheel-dir", str(dist)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def source_modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*.py")}


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def test_the_wheel_holds_every_module_of_the_package_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    code = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert source_modules() <= code, f"left out of the wheel: {sorted(source_modules() - code)}"
    assert code == source_modules(), f"in the wheel but not a module of the package: {sorted(code - source_modules())}"


def test_wheel_metadata_matches_the_package(wheel):
    meta = wheel_metadata(wheel)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["Name"] == "avalanche-neuromod"
    assert meta["Version"] == project["version"] == avalanche_neuromod.__version__, (
        "the version in pyproject.toml and avalanche_neuromod.__version__ must agree"
    )
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in core}
    assert {"avalanche-lib", "torch", "torchvision", "scikit-learn"} <= names
    # The CPU-only torch 2.13.0 file breaks torchvision (docs/installation.rst).
    assert not [r for r in requires if r.replace(" ", "").startswith("torch==")], requires
    assert any("ray" in r and 'extra == "ray"' in r for r in requires), requires
    assert meta["Requires-Python"] == project["requires-python"]


def test_a_user_can_train_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        sys.path.insert(0, {str(site)!r})
        import torch
        import avalanche_neuromod
        assert avalanche_neuromod.__file__.startswith({str(site)!r}), avalanche_neuromod.__file__
        modules = [m.name for m in pkgutil.walk_packages(avalanche_neuromod.__path__, "avalanche_neuromod.")]
        for name in modules:
            module = importlib.import_module(name)
            assert module.__file__.startswith({str(site)!r}), module.__file__
        from avalanche_neuromod.benchmarks import PermutedMNIST
        from avalanche_neuromod.models import NeuroModNet
        from avalanche_neuromod.training import CRWN
        torch.manual_seed(0)
        bench = PermutedMNIST(n_experiences=2, seed=0, return_task_id=True, dataset="digits")
        strategy = CRWN(model=NeuroModNet((64,)), n_iterations=60, train_mb_size=64, eval_mb_size=512)
        strategy.train(bench.train_stream[0])
        before = strategy.eval(bench.test_stream[:1])
        strategy.train(bench.train_stream[1])
        after = strategy.eval(bench.test_stream[:2])
        key = "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"
        print(len(modules), before[key], after[key])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    n_modules, before, after = done.stdout.split()[-3:]
    assert int(n_modules) == len(source_modules()) - 1  # every module but the package's __init__
    assert float(before) > 0.5  # it learned the first permutation of the digits
    assert float(after) == float(before)  # CRWN: exact zero forgetting, installed from the wheel too
