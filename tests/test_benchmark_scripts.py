"""The benchmark scripts, end to end on a tiny fake MNIST (numbers are not checked, their bookkeeping is)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import crwn_init_study  # noqa: E402
import crwn_mnist  # noqa: E402


def _run_grid(root: Path, out: Path, protocol: str) -> dict:
    code = crwn_mnist.main([
        "--dataset-root", str(root), "--rows", "FlyNet-10d", "FC256", "--streams", "rotated",
        "--modes", "local+global", "--tasks", "3", "--row-tasks", "FC256=2", "--iterations", "2",
        "--reference-tasks", "0", "--eval-protocol", protocol, "--no-docs", "--out", str(out),
    ])
    assert code == 0
    return json.loads(out.read_text())


def test_grid_final_protocol_keeps_only_what_was_measured(fake_mnist_root, tmp_path):
    result = _run_grid(fake_mnist_root, tmp_path / "grid.json", "final")
    assert result["complete"] and result["settings"]["eval_protocol_grid"] == "final"
    assert any("Grid evaluation" in line for line in result["scale"])
    runs = {run["row"]: run for run in result["grid"]}
    assert [runs["FlyNet-10d"]["tasks"], runs["FC256"]["tasks"]] == [3, 2]
    assert [runs["FlyNet-10d"]["params_per_task"], runs["FC256"]["params_per_task"]] == [7841, 1299]
    for run in runs.values():
        matrix = run["accuracy_matrix"]
        n = run["tasks"]
        for i in range(n - 1):  # rows before the last: only the task just trained
            assert [v is not None for v in matrix[i]] == [j == i for j in range(n)]
        assert all(v is not None for v in matrix[-1])
        assert run["accuracy_curve"] is None
        # CRWN never changes a learned task: right-after equals final, exactly.
        assert run["forgetting"] == [0.0] * (n - 1)
        assert run["mean_accuracy"] == pytest.approx(np.mean(matrix[-1]))


def test_grid_all_seen_protocol_fills_the_lower_triangle(fake_mnist_root, tmp_path):
    result = _run_grid(fake_mnist_root, tmp_path / "grid.json", "all-seen")
    run = result["grid"][0]
    matrix = run["accuracy_matrix"]
    for i, row in enumerate(matrix):
        assert [v is not None for v in row] == [j <= i for j in range(len(row))]
    assert len(run["accuracy_curve"]) == run["tasks"]
    assert run["accuracy_curve"][-1] == pytest.approx(np.mean(matrix[-1]))


def test_grid_refuses_a_missing_dataset_root(tmp_path, capsys):
    with pytest.raises(SystemExit):
        crwn_mnist.main(["--dataset-root", str(tmp_path), "--no-docs"])
    assert "MNIST not found" in capsys.readouterr().err


def test_init_study_summarises_every_seed_and_task(fake_mnist_root, tmp_path):
    out = tmp_path / "init.json"
    code = crwn_init_study.main([
        "--dataset-root", str(fake_mnist_root), "--seeds", "2", "--tasks", "2", "--iterations", "2",
        "--configs", "gaussian+rmsprop", "gaussian-x1.41+rmsprop", "--no-docs", "--out", str(out),
    ])
    assert code == 0
    result = json.loads(out.read_text())
    assert list(result["configs"]) == ["gaussian+rmsprop", "gaussian-x1.41+rmsprop"]
    for row in result["configs"].values():
        values = np.array(row["accuracy_per_seed_and_task"])
        assert values.shape == (2, 2) and ((values >= 0) & (values <= 1)).all()
        assert row["summary"]["mean"] == pytest.approx(values.mean())
        assert row["summary"]["std"] == pytest.approx(values.std(ddof=1))
        assert row["summary"]["min"] == values.min() and row["summary"]["max"] == values.max()
    assert result["configs"]["gaussian-x1.41+rmsprop"]["r_factor"] == pytest.approx(2 ** 0.5)
    section = crwn_init_study.markdown_section({**result, "wall_seconds": 1.0})
    assert section.startswith(crwn_init_study.SECTION_START) and section.endswith(crwn_init_study.SECTION_END)
    assert "(0, 10 degrees)" in section
