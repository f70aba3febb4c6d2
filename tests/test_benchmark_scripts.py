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


def _run_grid(root: Path, tmp_path: Path, protocol: str, *extra: str) -> dict:
    out = tmp_path / "grid.json"
    code = crwn_mnist.main([
        "--dataset-root", str(root), "--rows", "FlyNet-10d", "FC256", "--streams", "rotated",
        "--modes", "local+global", "--tasks", "3", "--row-tasks", "FC256=2", "--iterations", "2",
        "--reference-tasks", "0", "--eval-protocol", protocol, "--no-docs", "--out", str(out),
        "--cache-dir", str(tmp_path / "cells"), *extra,
    ])
    assert code == 0
    return json.loads(out.read_text())


def test_grid_final_protocol_keeps_only_what_was_measured(fake_mnist_root, tmp_path, capsys):
    result = _run_grid(fake_mnist_root, tmp_path, "final")
    assert result["settings"]["eval_protocol"] == "final"
    assert any("Grid evaluation" in line for line in result["scale"])
    assert any("first 3 of 36 tasks for FlyNet-10d; first 2 of 36 tasks for FC256" in line for line in result["scale"])
    cells = {cell["method"]: cell for cell in result["grid"]}
    assert list(cells) == ["FlyNet-10d", "NeuroModNet-FC256"]
    assert [len(c["final_accuracies"]) for c in cells.values()] == [3, 2]
    assert [c["params_per_task"] for c in cells.values()] == [7841, 1299]
    for cell in cells.values():
        matrix = cell["accuracy_matrix"]
        n = len(matrix)
        for i in range(n - 1):  # rows before the last: only the task just trained
            assert [v is not None for v in matrix[i]] == [j == i for j in range(n)]
        assert all(v is not None for v in matrix[-1])
        # CRWN never changes a learned task: right-after equals final, exactly.
        assert cell["forgetting"] == [0.0] * (n - 1)
        assert cell["avg_accuracy"] == pytest.approx(np.mean(matrix[-1]))
        assert len(cell["load_average_before_task"]) == len(cell["cpu_seconds"]) == n
    zero = next(t for t in result["targets"] if t["target"].startswith("CRWN zero forgetting"))
    assert zero["met"] and "(2 runs, 3 tasks)" in zero["target"]
    section = crwn_mnist.markdown_section(result)
    assert section.startswith(crwn_mnist.SECTION_START) and section.endswith(crwn_mnist.SECTION_END)
    assert "| rotated | FC256 | Local+Global | 2 of 36 |" in section
    # A second run of the same grid trains nothing: every cell comes from the cache.
    capsys.readouterr()
    again = _run_grid(fake_mnist_root, tmp_path, "final")
    assert capsys.readouterr().out.count("cached: ") == 2
    assert again["grid"] == result["grid"]


def test_grid_all_seen_protocol_and_the_reference_curves(fake_mnist_root, tmp_path):
    result = _run_grid(fake_mnist_root, tmp_path, "all-seen", "--reference-tasks", "3")
    cell = result["grid"][0]
    for i, row in enumerate(cell["accuracy_matrix"]):
        assert [v is not None for v in row] == [j <= i for j in range(len(row))]
    assert [c["method"] for c in result["reference"]] == ["NeuroModNet-FC256", "EWC", "Naive"]
    curves = crwn_mnist.reference_curves(result["reference"])
    for c in result["reference"]:
        matrix = c["accuracy_matrix"]
        assert all(v is not None for i, row in enumerate(matrix) for v in row[: i + 1])
    ewc = result["reference"][1]["accuracy_matrix"]
    assert curves["EWC"] == pytest.approx([ewc[0][0], (ewc[1][0] + ewc[1][1]) / 2, sum(ewc[2]) / 3])
    for name in ("EWC", "Naive"):
        k = result["crossings"][name]["first_task_count_below_fc256"]
        below = [m < r for m, r in zip(curves[name], curves["FC256"])]
        assert k == (below.index(True) + 1 if any(below) else None)
    names = [t["target"] for t in result["targets"]]
    assert any(n.startswith("FC256 keeps") for n in names) and any(n.startswith("EWC degrades") for n in names)


def test_first_crossing_and_its_statement():
    assert crwn_mnist.first_crossing([0.9, 0.8, 0.7], [0.85, 0.85, 0.85]) == 2
    assert crwn_mnist.first_crossing([0.9, 0.9], [0.85, 0.85]) is None
    assert "after task 2 of 3 (80.00% vs 85.00%)" in crwn_mnist.crossing_statement(
        "EWC", 2, [0.9, 0.8, 0.7], [0.85, 0.85, 0.85])


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


# ---------------------------------------------------------------- portable paths

import argparse  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402

import _report  # noqa: E402

REPO = BENCHMARKS.parent
# Absolute paths of a machine (home folders, scratch, temporary files, this checkout's /work).
MACHINE_PATH = re.compile(r"(?<![\w.~$])/(?:work|home|tmp|root|Users|mnt|scratch|private|var/folders)/")


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _assert_portable(text: str, *machine_paths: Path) -> None:
    for path in machine_paths:
        assert str(path) not in text
    assert not MACHINE_PATH.search(text), MACHINE_PATH.search(text)


def test_a_script_run_records_its_command_and_paths_portably(fake_mnist_root, tmp_path):
    out = tmp_path / "out" / "init.json"
    argv = ["--dataset-root", str(fake_mnist_root), "--seeds", "1", "--tasks", "1", "--iterations", "1",
            "--configs", "gaussian+rmsprop", "--no-docs", "--out", str(out)]
    assert crwn_init_study.main(argv) == 0
    text = out.read_text()
    result = json.loads(text)
    _assert_portable(text, fake_mnist_root, tmp_path, REPO)
    assert not [s for s in _strings(result) if s.startswith("/")]
    tokens = shlex.split(result["command"])
    assert tokens[1] == "benchmarks/crwn_init_study.py"
    assert tokens[tokens.index("--dataset-root") + 1] == "$AVALANCHE_NEUROMOD_DATA"
    assert tokens[tokens.index("--out") + 1] == "$AVALANCHE_NEUROMOD_DATA/out/init.json"
    assert '--dataset-root "$AVALANCHE_NEUROMOD_DATA"' in result["command"]  # the shell expands it
    assert result["dataset_root"] == "$AVALANCHE_NEUROMOD_DATA"
    assert [f["path"] for f in result["data_files"]] == [
        "MNIST/raw/t10k-images-idx3-ubyte.gz", "MNIST/raw/t10k-labels-idx1-ubyte.gz",
        "MNIST/raw/train-images-idx3-ubyte.gz", "MNIST/raw/train-labels-idx1-ubyte.gz"]
    assert all(len(f["md5"]) == 32 and f["bytes"] > 0 for f in result["data_files"])
    section = crwn_init_study.markdown_section({**result, "wall_seconds": 1.0})
    _assert_portable(section, fake_mnist_root, tmp_path, REPO)
    assert "`$AVALANCHE_NEUROMOD_DATA`" in section


def test_portable_path_rule(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv(_report.DATA_ROOT_ENV, str(data))
    assert _report.portable_path(REPO / "benchmarks" / "results" / "x.json") == "benchmarks/results/x.json"
    assert _report.portable_path(REPO / "data", is_data_root=True) == "data"  # a data root inside the checkout
    assert _report.portable_path(data) == "$AVALANCHE_NEUROMOD_DATA"
    assert _report.portable_path(data / "MNIST" / "raw" / "a.gz") == "$AVALANCHE_NEUROMOD_DATA/MNIST/raw/a.gz"
    assert _report.portable_path("/somewhere/else/figure.png") == "<outside-repo>/figure.png"
    assert _report.portable_path(tmp_path / "elsewhere", is_data_root=True) == "$AVALANCHE_NEUROMOD_DATA"


def test_command_line_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(_report.DATA_ROOT_ENV, raising=False)
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    command = _report.command_line(
        ["--dataset-root=" + str(tmp_path / "d"), "--out", str(REPO / "benchmarks" / "results" / "a.json"),
         "--context-plot", "rel", "--plot=/opt/figs/p.png", "--rows", "FC256"],
        script=BENCHMARKS / "crwn_mnist.py")
    assert shlex.split(command)[1:] == [
        "benchmarks/crwn_mnist.py", "--dataset-root=$AVALANCHE_NEUROMOD_DATA", "--out", "benchmarks/results/a.json",
        "--context-plot", "<outside-repo>/rel", "--plot=<outside-repo>/p.png", "--rows", "FC256"]
    assert str(tmp_path) not in command


def test_write_json_and_results_md_make_stray_paths_portable(fake_mnist_root, tmp_path):
    _report.check_mnist_root(argparse.ArgumentParser(), str(fake_mnist_root))
    out = tmp_path / "r.json"
    _report.write_json({"root": str(fake_mnist_root), "files": [str(fake_mnist_root / "MNIST" / "raw" / "x.gz")],
                        "note": f"read from {fake_mnist_root}/MNIST, see {REPO}/docs/results.md"}, out)
    assert json.loads(out.read_text()) == {
        "root": "$AVALANCHE_NEUROMOD_DATA", "files": ["$AVALANCHE_NEUROMOD_DATA/MNIST/raw/x.gz"],
        "note": "read from $AVALANCHE_NEUROMOD_DATA/MNIST, see docs/results.md"}
    md = tmp_path / "results.md"
    _report.update_results_md(f"<!-- s:start -->\n`{fake_mnist_root}`\n<!-- s:end -->", "<!-- s:start -->",
                              "<!-- s:end -->", md)
    assert "`$AVALANCHE_NEUROMOD_DATA`" in md.read_text() and str(tmp_path) not in md.read_text()


def test_docs_and_results_hold_no_machine_paths():
    files = [*sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs").glob("*.rst")), REPO / "README.md",
             *sorted((REPO / "benchmarks" / "results").glob("*.json"))]
    found = []
    for path in files:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "absolute paths of a machine (use a repository-relative path or " \
                      "$AVALANCHE_NEUROMOD_DATA):\n" + "\n".join(found)


def test_dynamos_benchmark_records_every_run(fake_mnist_root, tmp_path):
    import dynamos as dynamos_benchmark

    out = tmp_path / "dynamos.json"
    code = dynamos_benchmark.main([
        "--dataset-root", str(fake_mnist_root), "--streams", "mnist360", "--buffers", "200", "--seeds", "0", "1",
        "--methods", "dynamos", "der", "--max-batches", "3", "--no-docs", "--out", str(out),
    ])
    assert code == 0
    result = json.loads(out.read_text())
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [("dynamos", 0), ("der", 0), ("dynamos", 1),
                                                                  ("der", 1)]
    assert all(r["training_experiences"] == 3 and 0 <= r["accuracy"] <= 1 for r in result["runs"])
    assert "REDUCED" in result["scale"]
    rows = {row["method"]: row for row in result["summary"]}
    assert rows["dynamos"]["seeds"] == [0, 1] and len(rows["dynamos"]["keep_ratio_per_layer"]) == 4
    every = [100 * r["accuracy_every_channel"] for r in result["runs"] if r["method"] == "dynamos"]
    assert len(every) == 2 and rows["dynamos"]["accuracy_every_channel_mean"] == pytest.approx(sum(every) / 2)
    assert "accuracy_every_channel" not in next(r for r in result["runs"] if r["method"] == "der")
    sampled = [100 * r["accuracy_sampled"] for r in result["runs"] if r["method"] == "dynamos"]
    assert len(sampled) == 2 and rows["dynamos"]["accuracy_sampled_mean"] == pytest.approx(sum(sampled) / 2)
    assert "accuracy_sampled_mean" not in rows["der"]
    # Per class: the fake stream's classes, means over the seeds, in percent (JSON keys are strings).
    first, second = (r["class_accuracy"] for r in result["runs"] if r["method"] == "dynamos")
    assert set(first) == set(second) and all(0 <= v <= 1 for v in first.values())
    means = rows["dynamos"]["class_accuracy_mean"]
    assert set(means) == set(first)
    assert all(means[c] == pytest.approx(50 * (first[c] + second[c])) for c in first)
    assert set(rows["dynamos"]["class_accuracy_every_channel_mean"]) == set(first)
    assert "class_accuracy_every_channel_mean" not in rows["der"]
    assert rows["dynamos"]["paper"] == [79.64, 2.85]
    speed = [t for t in result["targets"] if "DER" in t["target"]]
    assert len(speed) == 1 and speed[0]["buffer"] == 200
    ratio = rows["dynamos"]["train_seconds_mean"] / rows["der"]["train_seconds_mean"]
    assert speed[0]["measured"].startswith(f"{ratio:.2f}x (") and speed[0]["met"] == (ratio <= 1.5)
    assert all(r["cpu_model"] == result["machine"]["cpu_model"] and r["weights_finite"] is True
               for r in result["runs"])
    # A reduced run is not held to the paper's accuracy.
    assert not [t for t in result["targets"] if "paper std" in t["target"]]


def test_dynamos_diagnostics_note_names_only_the_diagnostics_that_ran():
    import dynamos as dynamos_benchmark

    assert set(dynamos_benchmark.DIAGNOSTIC_NOTES) == set(dynamos_benchmark.DIAGNOSTICS)
    assert dynamos_benchmark.diagnostics_note(["dynamos", "consistency", "der"]) == ""
    note = dynamos_benchmark.diagnostics_note(["dynamos", "der_low_lr", "consistency_separate_passes",
                                               "dynamos_keep90", "dynamos_separate_passes"])
    assert note == ("dynamos_separate_passes and consistency_separate_passes (the buffer batch in a forward pass of "
                    "its own, `separate_replay_pass=True`, as the authors' code: batch-norm statistics per batch); "
                    "dynamos_keep90 (target keep ratio 0.9 instead of 0.7); der_low_lr (Avalanche's DER at lr 0.01)")


def test_dynamos_class_accuracy_table_averages_the_runs_that_recorded_it():
    import dynamos as dynamos_benchmark

    def run(seed, per_class=None):
        record = {"stream": "seq-mnist", "buffer": 500, "method": "consistency", "seed": seed, "accuracy": 0.5,
                  "train_seconds": 1.0, "training_experiences": 10}
        if per_class is not None:
            record["class_accuracy"] = per_class
        return record

    # One run just measured (int keys), one read back from JSON (string keys), one from before the field existed.
    runs = [run(0, {0: 1.0, 1: 0.5}), run(1, {"0": 0.5, "1": 0.25}), run(2)]
    (row,) = dynamos_benchmark.summarise(runs)
    assert row["seeds"] == [0, 1, 2] and row["class_accuracy_seeds"] == [0, 1]
    assert row["class_accuracy_mean"] == {0: pytest.approx(75.0), 1: pytest.approx(37.5)}
    lines = dynamos_benchmark.class_accuracy_lines([json.loads(json.dumps(row))])
    assert lines[-3:] == ["| stream | buffer | method | seeds | 0 | 1 |", "|---|---:|---|---|---:|---:|",
                          "| seq-mnist | 500 | consistency | 0, 1 | 75.0 | 37.5 |"]
    # Dynamos tested with every channel kept too: a second line, and a class only one of them saw stays blank.
    gated = dict(run(0, {0: 0.5, 1: 1.0}), method="dynamos", keep_ratio_per_layer=[0.7] * 4,
                 class_accuracy_every_channel={0: 0.25, 2: 1.0})
    lines = dynamos_benchmark.class_accuracy_lines(dynamos_benchmark.summarise([gated]))
    assert lines[-2:] == ["| seq-mnist | 500 | dynamos | 0 | 50.0 | 100.0 |  |",
                          "| seq-mnist | 500 | dynamos (every channel kept) | 0 | 25.0 |  | 100.0 |"]
    assert dynamos_benchmark.class_accuracy_lines(dynamos_benchmark.summarise([run(3)])) == []


def test_dynamos_sampled_gates_column_only_where_runs_recorded_it():
    import dynamos as dynamos_benchmark

    def run(seed, **fields):
        return dict({"stream": "mnist360", "buffer": 200, "method": "dynamos", "seed": seed, "accuracy": 0.5,
                     "train_seconds": 1.0, "training_experiences": 10, "keep_ratio_per_layer": [0.7] * 4,
                     "accuracy_every_channel": 0.25}, **fields)

    def section(runs):
        result = {"settings": {"label": None}, "runs": runs, "summary": dynamos_benchmark.summarise(runs),
                  "timestamp_utc": "2026-12-04T00:00:00", "command": "python benchmarks/dynamos.py",
                  "dataset_root": "data", "scale": "full streams",
                  "machine": {"cpu_count": 2, "cpu_model": "fast", "torch": "2", "avalanche": "0.6",
                              "torch_threads": 2}}
        return [line for line in dynamos_benchmark.markdown_section(result).splitlines()
                if line.startswith("| ")]

    # Older runs: the table keeps its nine columns.
    old = section([run(0), run(1)])
    assert old[0].endswith("| every channel kept (%) |") and old[1].endswith("| 25.00 |")
    # One of two seeds tested with sampled gates: a tenth column, its mean naming that seed.
    new = section([run(0, accuracy_sampled=0.4), run(1)])
    assert new[0].endswith("| every channel kept (%) | gates sampled (%) |")
    assert new[1].endswith("| 25.00 | 40.00 (seed 0) |")


def test_dynamos_time_targets_compare_runs_of_one_machine():
    import dynamos as dynamos_benchmark

    def run(method, seed, seconds, cpu=None):
        record = {"stream": "mnist360", "buffer": 200, "method": method, "seed": seed, "accuracy": 0.5,
                  "train_seconds": seconds, "training_experiences": 3387}
        if cpu:
            record["cpu_model"] = cpu
        if method == "dynamos":
            record["keep_ratio_per_layer"] = [0.8, 0.7, 0.7, 0.7]
        return record

    # Old runs (no processor recorded) on a slow machine, new ones on a fast one.
    runs = [run("dynamos", 0, 330.0), run("der", 0, 440.0), run("der", 1, 200.0, "fast"),
            run("dynamos", 1, 203.22, "fast"), run("dynamos", 2, 200.0, "fast")]
    runs[2]["weights_finite"] = False
    targets = dynamos_benchmark.check_targets(dynamos_benchmark.summarise(runs), runs)
    ratio = next(t for t in targets if "DER" in t["target"])
    minutes = next(t for t in targets if "5 min" in t["target"])
    # Only the fast machine counts: (203.22 + 200) / 2 = 201.61 s against DER's 200 s.
    assert ratio["measured"] == "1.01x (fast, 2 Dynamos runs, 1 DER run)" and ratio["met"]
    assert minutes["measured"] == "60 ms per online mini-batch: 3.4 min (fast, 2 Dynamos runs)" and minutes["met"]
    # The newest Dynamos run decides the machine: with an old one last, only old runs count.
    runs.append(runs.pop(0))
    targets = dynamos_benchmark.check_targets(dynamos_benchmark.summarise(runs), runs)
    minutes = next(t for t in targets if "5 min" in t["target"])
    assert minutes["measured"] == "97 ms per online mini-batch: 5.5 min (machine not recorded, 1 Dynamos run)"
    assert not minutes["met"]
    assert next(t for t in targets if "DER" in t["target"])["measured"].startswith("0.75x (")
    section = dynamos_benchmark.markdown_section({
        "settings": {"label": None}, "runs": runs, "summary": dynamos_benchmark.summarise(runs), "targets": targets,
        "timestamp_utc": "2026-12-02T00:00:00", "command": "python benchmarks/dynamos.py", "dataset_root": "data",
        "machine": {"cpu_count": 2, "cpu_model": "fast", "torch": "2", "avalanche": "0.6", "torch_threads": 2},
        "scale": "full streams"})
    assert "fast: 3 runs" in section and "machine not recorded: 2 runs" in section
    assert "| der | 0, 1 | 50.00 +- 0.00 (NaN weights: seed 1) |" in section
    # Runs on an accelerator are another machine, and the 2-core time targets are not theirs.
    gpu = [dict(r, cpu_model="fast", device="cuda: H200") for r in runs]
    assert dynamos_benchmark.run_machine(gpu[0]) == "fast + cuda: H200"
    assert dynamos_benchmark.run_machine(dict(gpu[0], device="cpu")) == "fast"
    gpu_targets = dynamos_benchmark.check_targets(dynamos_benchmark.summarise(gpu), gpu)
    assert gpu_targets and not [t for t in gpu_targets if "DER" in t["target"] or "5 min" in t["target"]]
    section = dynamos_benchmark.markdown_section({
        "settings": {"label": None}, "runs": gpu, "summary": dynamos_benchmark.summarise(gpu), "targets": gpu_targets,
        "timestamp_utc": "2026-12-02T00:00:00", "command": "python benchmarks/dynamos.py", "dataset_root": "data",
        "machine": {"cpu_count": 16, "cpu_model": "fast", "torch": "2", "avalanche": "0.6", "torch_threads": 2},
        "scale": "full streams; trained and tested on cuda", "how_run": ["8 at a time on one GPU"]})
    assert "- 8 at a time on one GPU" in section and "trained and tested on cuda" in section


def test_dynamos_benchmark_appends_runs_of_the_same_scale(fake_mnist_root, tmp_path):
    import dynamos as dynamos_benchmark

    out = tmp_path / "dynamos.json"
    common = ["--dataset-root", str(fake_mnist_root), "--streams", "mnist360", "--buffers", "100",
              "--max-batches", "2", "--no-docs", "--out", str(out)]
    assert dynamos_benchmark.main(common + ["--seeds", "0", "--methods", "sgd", "consistency",
                                            "--note", "stopped once"]) == 0
    first = json.loads(out.read_text())
    assert first["how_run"] == ["stopped once"]
    assert dynamos_benchmark.main(common + ["--seeds", "1", "0", "--methods", "sgd", "--append",
                                            "--note", "beside other work"]) == 0
    result = json.loads(out.read_text())
    assert result["how_run"] == ["stopped once", "beside other work"]  # an append keeps the earlier notes
    assert "- stopped once\n- beside other work" in dynamos_benchmark.markdown_section(result)
    keys = [(r["method"], r["seed"]) for r in result["runs"]]
    assert sorted(keys) == [("consistency", 0), ("sgd", 0), ("sgd", 1)]  # sgd seed 0 replaced, not doubled
    kept = next(r for r in result["runs"] if r["method"] == "consistency")
    assert kept == next(r for r in first["runs"] if r["method"] == "consistency")
    assert len(result["commands"]) == 2 and "--append" in result["commands"][1]
    rows = {row["method"]: row for row in result["summary"]}
    assert rows["sgd"]["seeds"] == [1, 0] and rows["consistency"]["seeds"] == [0]
    assert rows["sgd"]["buffer"] == 0 and rows["consistency"]["buffer"] == 100
    with pytest.raises(SystemExit, match="max-batches"):
        dynamos_benchmark.main([a if a != "2" else "3" for a in common] + ["--seeds", "0", "--methods", "sgd",
                                                                          "--append"])
    # A run of another device would replace the same seed's run of this one: refused.
    with pytest.raises(SystemExit, match="--device cpu, this invocation cuda"):
        dynamos_benchmark.main(common + ["--seeds", "0", "--methods", "sgd", "--append", "--device", "cuda"])


def test_every_dynamos_benchmark_method_trains(fake_mnist_root, tmp_path):
    import dynamos as dynamos_benchmark

    out = tmp_path / "dynamos.json"
    assert dynamos_benchmark.main([
        "--dataset-root", str(fake_mnist_root), "--streams", "mnist360", "--buffers", "100", "--seeds", "0",
        "--methods", *dynamos_benchmark.METHODS, "--max-batches", "2", "--no-docs", "--out", str(out),
    ]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["method"] for r in runs) == sorted(dynamos_benchmark.METHODS)
    assert all(r["training_experiences"] == 2 and 0 <= r["accuracy"] <= 1 for r in runs)


def test_dynamos_benchmark_runs_memory_free_sgd_once_per_seed():
    import dynamos as dynamos_benchmark

    planned = dynamos_benchmark.planned_runs([100, 200], [0, 1], ["dynamos", "sgd"])
    assert planned == [(100, 0, "dynamos"), (0, 0, "sgd"), (100, 1, "dynamos"), (0, 1, "sgd"),
                       (200, 0, "dynamos"), (200, 1, "dynamos")]


def test_dynamos_diagnostics_change_only_what_they_name(fake_mnist_root):
    import torch

    import dynamos as dynamos_benchmark

    flipped = dynamos_benchmark.make_strategy("dynamos_flipped_reward", "mnist360", 200, 10, 1)
    plain = dynamos_benchmark.make_strategy("dynamos", "mnist360", 200, 10, 1)
    assert flipped.replay_plugin.penalty == -plain.replay_plugin.penalty == -200
    assert not plain.replay_plugin.separate_replay_pass
    for method in ("dynamos_separate_passes", "consistency_separate_passes"):
        separate = dynamos_benchmark.make_strategy(method, "mnist360", 200, 10, 1)
        assert separate.replay_plugin.separate_replay_pass and separate.replay_plugin.penalty == (
            200 if method.startswith("dynamos") else 1.0)
    for method in ("dynamos", "consistency", "der", "sgd", "replay", "er_ace"):  # --device reaches every method
        assert dynamos_benchmark.make_strategy(method, "mnist360", 100, 10, 1, device="meta").device == torch.device(
            "meta")
    weights = ("alpha", "beta", "alpha_p", "penalty", "gamma", "w_p")
    for method, zeroed in dynamos_benchmark.TERM_ABLATIONS.items():
        strategy = dynamos_benchmark.make_strategy(method, "mnist360", 200, 10, 1)
        ablated = strategy.replay_plugin
        for name in weights:
            expected = 0.0 if name in zeroed else getattr(plain.replay_plugin, name)
            assert getattr(ablated, name) == expected, (method, name)
        assert ablated.keep_ratio == 0.7
        detached = method in ("dynamos_no_prototype_detached", "dynamos_policy_only_detached")
        assert all(agent.detach_input == detached for agent in strategy.model.agents), method
    assert {"gamma", "w_p", "alpha_p"} == set(dynamos_benchmark.TERM_ABLATIONS["dynamos_gates_only"])
    for method, keep in dynamos_benchmark.KEEP_RATIO_VARIANTS.items():
        variant = dynamos_benchmark.make_strategy(method, "mnist360", 200, 10, 1).replay_plugin
        assert variant.keep_ratio == keep != plain.replay_plugin.keep_ratio == 0.7
        assert all(getattr(variant, name) == getattr(plain.replay_plugin, name) for name in weights)
    assert plain.replay_plugin.gamma > 0 and plain.replay_plugin.w_p > 0 and plain.replay_plugin.alpha_p > 0
    for method, zeroed in dynamos_benchmark.KEEP90_TERM_VARIANTS.items():
        strategy = dynamos_benchmark.make_strategy(method, "mnist360", 200, 10, 1)
        variant = strategy.replay_plugin
        assert variant.keep_ratio == 0.9
        for name in weights:
            expected = 0.0 if name in zeroed else getattr(plain.replay_plugin, name)
            assert getattr(variant, name) == expected, (method, name)
        assert all(agent.detach_input == (method == "dynamos_keep90_detached") for agent in strategy.model.agents)
    assert not any(agent.detach_input for agent in plain.model.agents)
    for method, w_p in dynamos_benchmark.PROTOTYPE_WEIGHT_VARIANTS.items():
        variant = dynamos_benchmark.make_strategy(method, "seq-mnist", 500, 10, 3).replay_plugin
        table = dynamos_benchmark.make_strategy("dynamos", "seq-mnist", 500, 10, 3).replay_plugin
        assert variant.w_p == w_p < table.w_p == 0.3 and variant.keep_ratio == table.keep_ratio == 0.7
        assert all(getattr(variant, name) == getattr(table, name) for name in weights if name != "w_p"), method
    for method, zeroed in dynamos_benchmark.KEEP100_TERM_VARIANTS.items():
        strategy = dynamos_benchmark.make_strategy(method, "mnist360", 200, 10, 1)
        variant = strategy.replay_plugin
        assert variant.keep_ratio == 1.0 and variant.gamma == plain.replay_plugin.gamma > 0
        for name in weights:
            expected = 0.0 if name in zeroed else getattr(plain.replay_plugin, name)
            assert getattr(variant, name) == expected, (method, name)
        assert all(agent.detach_input for agent in strategy.model.agents), method
    torch_lp = dynamos_benchmark.make_strategy("dynamos_torch_logprob", "mnist360", 200, 10, 1)
    agent = torch_lp.model.agents[0]
    assert type(agent).__name__ == "TorchLogProbAgent" and isinstance(agent, type(plain.model.agents[0]))
    x = torch.rand(4, agent.in_channels, 6, 6)
    torch.manual_seed(0)
    decision = agent.train()(x)
    expected = torch.distributions.Bernoulli(probs=decision.prob).log_prob(decision.actions).sum(dim=1)
    assert torch.equal(decision.log_prob, expected)
    # What it changes: a saturated probability gives no policy gradient (torch clamps p), the exact form does.
    logits = torch.tensor([40.0], requires_grad=True)
    torch.distributions.Bernoulli(probs=torch.sigmoid(logits)).log_prob(torch.zeros(1)).sum().backward()
    assert logits.grad.abs().item() == 0
    exact = torch.tensor([40.0], requires_grad=True)
    torch.nn.functional.logsigmoid(-exact).sum().backward()  # log(1 - p) for a dropped channel, as ours
    assert exact.grad.abs().item() > 0
    root = ["--dataset-root", str(fake_mnist_root)]
    assert dynamos_benchmark.parse_args(root).methods == ["dynamos", "consistency", "sgd", "der", "er_ace", "replay"]
    labelled = dynamos_benchmark.parse_args(root + ["--label", "reward-study"])
    assert labelled.out.name == "dynamos_reward-study.json"
    with pytest.raises(SystemExit):
        dynamos_benchmark.parse_args(root + ["--label", "a b"])


def test_unmasked_backbone_diagnostic_keeps_the_agents_out_of_the_backbone(fake_mnist_root):
    """Whatever the agents decide, the unmasked variant's backbone trains the same; the masked one's does not."""
    import torch

    import dynamos as dynamos_benchmark
    from avalanche_neuromod.training import train_online

    benchmark = dynamos_benchmark.build_stream("mnist360", fake_mnist_root)
    experiences = dynamos_benchmark.training_experiences(benchmark, "mnist360", 24)  # 10 warm-up, 14 with replay

    def train(method, scramble_agents):
        torch.manual_seed(0)
        strategy = dynamos_benchmark.make_strategy(method, "mnist360", 100, benchmark.n_classes, 1)
        if scramble_agents:  # other agents: other masks and rewards, the same number of draws
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in strategy.model.agent_parameters():
                    p.copy_(3 * torch.randn(p.shape, generator=generator))
        agents_before = [p.detach().clone() for p in strategy.model.agent_parameters()]
        torch.manual_seed(0)
        train_online(strategy, experiences, chunk_size=100, progress=False)
        assert len(strategy.buffer) > 0
        backbone = {k: v.detach().clone() for k, v in strategy.model.state_dict().items()
                    if not k.startswith("agent") and ".agent" not in k}
        moved = any(not torch.equal(a, p) for a, p in zip(agents_before, strategy.model.agent_parameters()))
        return backbone, moved

    unmasked, unmasked_scrambled = (train("dynamos_keep100_unmasked_detached", s) for s in (False, True))
    assert unmasked[1] and unmasked_scrambled[1], "the agents learn on the gated pass"
    assert unmasked[0].keys() == unmasked_scrambled[0].keys() and len(unmasked[0]) > 0
    assert all(torch.equal(unmasked[0][k], unmasked_scrambled[0][k]) for k in unmasked[0])
    masked, masked_scrambled = (train("dynamos_keep100_policy_only_detached", s)[0] for s in (False, True))
    assert not all(torch.equal(masked[k], masked_scrambled[k]) for k in masked)


def test_dynamos_gap_figure_takes_each_run_from_the_first_file_that_has_it(tmp_path, capsys):
    import dynamos as dynamos_benchmark

    def run(method, seed, accuracy, stream="mnist360", buffer=100):
        return {"stream": stream, "method": method, "buffer": buffer, "seed": seed, "accuracy": accuracy}

    main = {"runs": [run("dynamos", 0, 0.50), run("dynamos", 1, 0.54), run("consistency", 0, 0.60),
                     run("dynamos", 0, 0.95, "seq-mnist", 500)]}
    study = {"runs": [run("consistency", 0, 0.10), run("consistency", 1, 0.20),
                      run("dynamos_keep100_policy_only_detached", 2, 0.58)]}
    points = dynamos_benchmark.gap_points([main, study])
    assert set(points) == {("mnist360", 100), ("mnist360", 200), ("mnist360", 500),
                           ("seq-mnist", 500), ("seq-mnist", 1000), ("seq-mnist", 2000)}
    point = points[("mnist360", 100)]
    mean, std, seeds = point["dynamos"]
    assert mean == pytest.approx(52.0) and std == pytest.approx(2 * 2 ** 0.5) and seeds == [0, 1]
    mean, std, seeds = point["consistency"]  # seed 0 from the first file (60%), seed 1 from the study's
    assert mean == pytest.approx(40.0) and std == pytest.approx(800 ** 0.5) and seeds == [0, 1]
    assert point["dynamos_keep100_policy_only_detached"] == (pytest.approx(58.0), None, [2])
    assert point["paper"] == (64.42, 4.10, None)
    assert points[("seq-mnist", 500)] == {"paper": (97.19, None, None), "dynamos": (95.0, None, [0])}
    assert set(points[("mnist360", 200)]) == {"paper"}
    figure = tmp_path / "gap.png"
    dynamos_benchmark.draw_gap_figure(points, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # From the command line: the files next to --out, the figure beside them; a missing file is named.
    out = tmp_path / "dynamos.json"
    with pytest.raises(SystemExit, match="dynamos_term-ablation.json"):
        dynamos_benchmark.main(["--gap-figure", "--out", str(out)])
    for name, result in zip(dynamos_benchmark.GAP_SOURCES, (main, study, {"runs": []})):
        (tmp_path / name).write_text(json.dumps(result))
    assert dynamos_benchmark.main(["--gap-figure", "--out", str(out)]) == 0
    assert (tmp_path / dynamos_benchmark.GAP_FIGURE.name).exists()
    assert "mnist360 buffer 100: paper 64.42 +- 4.10; dynamos 52.00 +- 2.83" in capsys.readouterr().out


def test_machine_line_names_the_processor_family_and_vector_extensions():
    zen4 = {"cpu_family": 25, "model": 17, "avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False}
    older = {"cpu_family": 23, "model": 49, "avx2": True, "avx512f": False, "avx512_bf16": False}
    assert _report.cpu_details_text(zen4) == ", family 25 model 17, AVX-512 with BF16"
    assert _report.cpu_details_text(older) == ", family 23 model 49, AVX2, no AVX-512"
    assert _report.cpu_details_text(None) == "" and _report.cpu_details_text({}) == ""
    machine = {"cpu_count": 2, "cpu_model": "AMD EPYC", "torch": "2", "avalanche": "0.6", "torch_threads": 2,
               "cpu_details": zen4}
    assert "(AMD EPYC, family 25 model 17, AVX-512 with BF16)" in _report.machine_line(machine)
    details = _report.cpu_details()  # this machine: whatever it is, the record has the fields the text reads
    assert details == {} or {"avx2", "avx512f", "avx512_bf16"} <= set(details)


def test_grid_scripts_run_parallel_crwn_tasks_with_the_serial_results(fake_mnist_root, tmp_path):
    """crwn_mnist.py --parallel-tasks processes: the same cells as the serial run (without Ray)."""
    serial = _run_grid(fake_mnist_root, tmp_path / "a", "final")
    parallel = _run_grid(fake_mnist_root, tmp_path / "b", "final", "--parallel-tasks", "processes",
                         "--task-workers", "2")
    assert parallel["scaling"] == {"executor": "serial", "ray_address": None, "threads": 1,
                                   "task_backend": "processes", "task_workers": 2}
    assert any("CRWN tasks in parallel (processes)" in line for line in parallel["scale"])
    for a, b in zip(serial["grid"], parallel["grid"]):
        assert a["accuracy_matrix"] == b["accuracy_matrix"] and a["forgetting"] == b["forgetting"]
        assert b["task_backend"] == "processes" and "task_backend" not in a


def test_scaling_options_from_the_command_line():
    import argparse

    from _report import add_scaling_arguments, scaling_options, scaling_text

    parser = argparse.ArgumentParser()
    add_scaling_arguments(parser)
    options = scaling_options(parser.parse_args(["--ray-address", "auto", "--threads", "2"]))
    assert options["executor"] == "ray" and options["ray_address"] == "auto" and options["threads"] == 2
    assert scaling_text(options) == "cells as Ray tasks on a cluster, 2 torch thread(s) per cell"
    assert scaling_options(parser.parse_args([]))["executor"] == "serial"
    with pytest.raises(SystemExit):
        scaling_options(parser.parse_args(["--threads", "0"]))


def test_scaling_benchmark_reports_every_part(fake_mnist_root, tmp_path):
    pytest.importorskip("ray")
    import scaling

    out = tmp_path / "scaling.json"
    args = ["--dataset-root", str(fake_mnist_root), "--tasks", "2", "--iterations", "2", "--grid-tasks", "2",
            "--grid-iterations", "2", "--grid-methods", "FlyNet-10d", "Naive", "--paper-rows", "FlyNet-10d",
            "--paper-modes", "local+global", "--paper-streams", "rotated", "--paper-tasks", "2",
            "--paper-iterations", "2", "--paper-task-backend", "ray", "--cache-dir", str(tmp_path / "cells"),
            "--out", str(out), "--no-docs"]
    assert scaling.main([*args, "--parts", "tasks", "grid"]) == 0
    assert scaling.main([*args, "--parts", "paper"]) == 0  # keeps the other parts' figures
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["tasks"]["runs"]]
    assert names == ["in order, 1 thread(s)", "in order, 2 thread(s)", "processes, 1 worker(s)",
                     "processes, 2 worker(s)", "Ray, 2 workers"]
    equal = {r["name"]: r["equal_to_in_order_1_thread"] for r in result["tasks"]["runs"]}
    assert all(equal[n] for n in names if "1 thread" in n or "worker" in n)
    assert result["grid"]["identical"] is True
    assert [c["method"] for c in result["paper"]["cells"]] == ["FlyNet-10d"]
    assert result["paper"]["cells"][0]["task_backend"] == "ray"
    section = scaling.markdown_section(result)
    assert section.startswith(scaling.SECTION_START) and section.endswith(scaling.SECTION_END)
    for heading in ("CRWN tasks in parallel", "serially and on Ray", "cells and their tasks as Ray tasks"):
        assert heading in section
    assert len(result["commands"]) == 2
