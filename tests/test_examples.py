"""The README's main job and the CRWN example, run end to end at a tiny scale.

``make demo`` runs ``examples/quickstart.py``; these tests import each
example and call its ``main`` with arguments that keep it to seconds, then
check what a user would look at: the printed table and the saved figures.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_compares_every_method_and_saves_the_figure(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        load("quickstart").main(["--experiences", "2", "--epochs", "1", "--batch", "128",
                                 "--out", str(tmp_path / "quickstart.png")])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    methods = {"CRWN (NeuroModNet-FC256)", "Dynamos (200, 1 pass)", "Naive", "EWC (lambda=100)", "Replay (200)",
               "GEM (64/exp)"}
    assert methods <= set(rows), printed
    # CRWN learns the digits' first permutation and forgets none of it (its row's first two figures:
    # average accuracy, then forgetting).
    crwn = [float(x) for x in re.findall(r"\d+\.\d+", rows["CRWN (NeuroModNet-FC256)"])]
    assert crwn[0] > 0.5 and crwn[1] == 0.0, rows["CRWN (NeuroModNet-FC256)"]
    assert (tmp_path / "quickstart.png").stat().st_size > 10_000


def test_crwn_example_prints_zero_forgetting_and_draws_its_figures(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        load("crwn_rotated_mnist").main(["--experiences", "2", "--model", "neuromodnet", "--hidden", "32",
                                         "--iterations", "30", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "forgetting 0.000000" in printed, printed
    table = [line for line in printed.splitlines() if re.match(r"\| \d \|", line)]
    assert len(table) == 2
    for line in table:  # accuracy after its training == final accuracy, task by task
        after, final = line.split("|")[3:5]
        assert float(after) == float(final) > 0.3, line
    for name in ("accuracy_matrix.png", "context_similarity.png"):
        assert (tmp_path / name).stat().st_size > 5_000
