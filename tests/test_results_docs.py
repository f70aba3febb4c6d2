"""docs/results.md says what the result files in benchmarks/results say.

Every section a script wrote is, line for line, what that script renders from its result file now; the
summaries and targets stored in the Dynamos and TSAR files follow from their runs; the CRWN sections written by
hand before the scripts rendered them hold their files' accuracies. A section edited by hand, a file changed
without its section, or a renderer changed without re-rendering fails here; ``--report`` re-renders.
"""

import functools
import importlib
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
RESULTS_MD = REPO / "docs" / "results.md"
sys.path.insert(0, str(BENCHMARKS))

import _report  # noqa: E402

HAND_WRITTEN = {"crwn_mnist.json": "crwn_mnist", "crwn_mnist_flynet.json": "crwn_flynet",
                "crwn_mnist_rotated_wide.json": "crwn_rotated_wide"}
"""Sections written before the CRWN script rendered them from its file (older cell format), by their file."""
RECOMPUTED = ("dynamos", "tsar")
"""Scripts whose ``--report`` recomputes a file's summary and targets from its runs."""
FILES = sorted(RESULTS.glob("*.json"))
SCRIPTED = [p for p in FILES if p.name not in HAND_WRITTEN]


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _script(result: dict):
    """The benchmark module that wrote a result file, and the ``--label`` of its command (None without)."""
    argv = shlex.split(result["command"])
    script = next(arg for arg in argv if arg.startswith("benchmarks/") and arg.endswith(".py"))
    label = argv[argv.index("--label") + 1] if "--label" in argv else None
    return importlib.import_module(Path(script).stem), label


@functools.lru_cache(maxsize=None)
def _rendered(path: Path) -> str:
    """The section the script of a result file renders from it (two tests need each: rendered once)."""
    return _render(_load(path))


def _render(result: dict) -> str:
    module, label = _script(result)
    if hasattr(module, "render_section"):  # compare.py: the label is not part of its file
        section = module.render_section(result, label)
    else:
        section = module.markdown_section(result)
    return _report._replace_roots(section)  # as update_results_md writes it


@functools.lru_cache(maxsize=None)
def _sections() -> dict:
    """docs/results.md's sections by key (``dynamos:term-ablation``), markers included."""
    text = RESULTS_MD.read_text()
    return {m.group(1): m.group(0) for m in re.finditer(r"<!-- ([\w:.-]+):start -->.*?<!-- \1:end -->", text, re.S)}


def _key(section: str) -> str:
    return re.match(r"<!-- ([\w:.-]+):start -->", section).group(1)


def _roundtrip(value):
    return json.loads(json.dumps(value))


def test_the_checks_cover_every_result_file_and_the_renderers_of_each_script():
    assert len(FILES) >= 30 and all(name in {p.name for p in FILES} for name in HAND_WRITTEN)
    scripts = {_script(_load(p))[0].__name__ for p in SCRIPTED}
    assert scripts == {"compare", "crwn_init_study", "dynamos", "scaling", "stream_throughput", "tsar"}


@pytest.mark.parametrize("path", SCRIPTED, ids=[p.stem for p in SCRIPTED])
def test_each_section_is_what_its_script_renders_from_its_file(path):
    rendered = _rendered(path)
    key = _key(rendered)
    sections = _sections()
    assert key in sections, f"docs/results.md has no section {key} for {path.name}"
    module = _script(_load(path))[0].__name__
    fix = (f"`python benchmarks/{module}.py --report --out benchmarks/results/{path.name}` re-renders it"
           if module in RECOMPUTED else "re-render it from the file")
    differing = [(i, a, b) for i, (a, b) in enumerate(zip(sections[key].splitlines(), rendered.splitlines()), 1)
                 if a != b]
    assert sections[key] == rendered, (
        f"section {key} of docs/results.md is not what benchmarks/{module}.py renders from {path.name} ({fix}); "
        f"first differing line: {differing[0] if differing else 'one is longer'}")


@pytest.mark.parametrize("path", [p for p in SCRIPTED if p.name.startswith(RECOMPUTED)],
                         ids=[p.stem for p in SCRIPTED if p.name.startswith(RECOMPUTED)])
def test_stored_summary_and_targets_follow_from_the_runs(path):
    result = _load(path)
    module, _ = _script(result)
    summary = module.summarise(result["runs"])
    assert _roundtrip(summary) == result["summary"]
    if module.__name__ == "tsar":
        targets = module.targets(summary, result["runs"], result["settings"])
    else:
        targets = module.check_targets(summary, result["runs"])
    assert _roundtrip(targets) == result["targets"]


def test_every_section_belongs_to_a_result_file():
    owned = {_key(_rendered(p)) for p in SCRIPTED} | set(HAND_WRITTEN.values())
    assert set(_sections()) == owned


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_crwn_sections_hold_their_files_accuracies(name):
    result = _load(RESULTS / name)
    lines = _sections()[HAND_WRITTEN[name]].splitlines()
    modes = {"local+global": "Local+Global", "local-only": "Local-only"}
    assert result["grid"]
    for cell in result["grid"]:
        row = (f"| {cell['stream']} | {cell['row']} | {modes[cell['mode']]} | {cell['tasks_measured']} of "
               f"{cell['stream_length']} | {100 * cell['mean_accuracy']:.2f} | {cell['params_per_task']:,} |")
        assert any(line.startswith(row) for line in lines), f"{name}: no row {row}"
        assert cell["max_forgetting"] == 0.0  # CRWN's zero forgetting, as the sections say


def test_every_figure_the_docs_show_exists_and_every_stored_figure_is_shown():
    pages = [*sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs").glob("*.rst")), REPO / "README.md"]
    shown = {m.group(1) for page in pages for m in re.finditer(r"images/([\w.-]+\.png)", page.read_text())}
    stored = {p.name for p in (REPO / "docs" / "images").glob("*.png")}
    assert shown and shown <= stored, f"shown but missing: {sorted(shown - stored)}"
    assert stored <= shown, f"in docs/images but shown nowhere: {sorted(stored - shown)}"
