"""The Python examples in README.md and docs/*.rst name what exists and call it with arguments it takes.

Each is parsed, its imports are executed, and every call of a callable it
imports, or of a public name of the package, is bound to that callable's
signature: a renamed keyword, a removed function or a typo fails here
instead of in a user's first session. The self-contained ones that need no
dataset (scikit-learn's digits or no stream at all) also run, in a
temporary folder; the rest read datasets or continue an earlier snippet.
"""

import ast
import builtins
import functools
import importlib
import inspect
import re
import textwrap
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.rst"))]
SUBPACKAGES = ("benchmarks", "models", "training", "evaluation", "analysis")


def _snippets(path: Path):
    """``(first line number, code)`` of every Python block of a markdown or reStructuredText page."""
    text = path.read_text()
    if path.suffix == ".md":
        for m in re.finditer(r"```python\n(.*?)```", text, re.S):
            yield text[:m.start()].count("\n") + 2, m.group(1)
        return
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != ".. code-block:: python":
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith(":")):
            i += 1
        start, block = i + 1, []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i])
            i += 1
        yield start, textwrap.dedent("\n".join(block))


SNIPPETS = [(path, line, code) for path in PAGES for line, code in _snippets(path)]


@functools.lru_cache(maxsize=None)
def _public_names() -> dict:
    """Every public name of the package's subpackages (snippets that continue an earlier one use them unimported)."""
    names = {}
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"avalanche_neuromod.{sub}")
        names.update({name: getattr(module, name) for name in module.__all__})
    return names


def _imported(tree: ast.AST) -> dict:
    """Run the snippet's imports; the objects they bind, by name."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                bound[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])
    return bound


def _callee(func: ast.AST, known: dict):
    """The object a call's ``func`` names when it is a known name or a known name's attribute (``TSARNet.build``,
    ``torch.optim.SGD``); None for anything else (methods of objects the snippet made)."""
    if isinstance(func, ast.Name):
        return known.get(func.id)
    if isinstance(func, ast.Attribute):
        owner = _callee(func.value, known)
        if owner is None:
            return None
        assert hasattr(owner, func.attr), f"{ast.unparse(func.value)} has no attribute {func.attr}"
        return getattr(owner, func.attr)
    return None


def _keywords_taken(target) -> "set | None":
    """The keyword arguments a callable takes; a class's ``**kwargs`` followed up its bases' ``__init__`` (as
    Avalanche's strategies pass them on, refusing what no class of the chain names). None: a function's
    ``**kwargs``, where any keyword may be right."""
    chain = [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__] if inspect.isclass(target) \
        else [target]
    names = set()
    for function in chain:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names
    return names if inspect.isclass(target) else None


def test_the_pages_hold_snippets_and_all_parse():
    assert len(SNIPPETS) >= 20
    for path, line, code in SNIPPETS:
        ast.parse(code, filename=f"{path.name}:{line}")


@pytest.mark.parametrize("path,line,code", SNIPPETS, ids=[f"{p.name}:{n}" for p, n, _ in SNIPPETS])
def test_snippet_imports_exist_and_calls_bind_to_their_signatures(path, line, code):
    tree = ast.parse(code)
    known = {**_public_names(), **_imported(tree)}
    checked = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _callee(node.func, known)
        if target is None or not callable(target) or inspect.ismodule(target):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue  # *args / **kwargs: not checkable statically
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # builtins without a signature
            continue
        where = f"{path.name}, snippet at line {line}: {ast.unparse(node.func)}(...)"
        try:
            signature.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
        except TypeError as error:
            if "missing" in str(error):  # a snippet may leave out what the page explains elsewhere
                continue
            raise AssertionError(f"{where} does not match {signature}: {error}") from None
        taken = _keywords_taken(target)
        unknown = sorted({k.arg for k in node.keywords} - taken) if taken is not None else []
        assert not unknown, f"{where} takes no keyword {', '.join(unknown)} (it takes {', '.join(sorted(taken))})"
        checked.append(where)
    if any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("avalanche_neuromod")
           for n in ast.walk(tree)):
        assert checked, "a snippet that imports from the package calls something of it"


PAPER_SIZE = "TSARNet.build(1000)"
"""A snippet that builds the paper's TSAR networks (589M regulator parameters, 2.4 GB): checked, not run."""


def _free_names(tree: ast.AST) -> set:
    """Names a snippet reads before any line of its own binds them (it continues an earlier snippet).

    A name bound on the line that reads it counts as read first (``x = f(x)``), except a loop's or a
    comprehension's variable, which is bound before its body reads it.
    """
    first_bound, loads = {}, []

    def bind(name: str, line: int) -> None:
        first_bound[name] = min(first_bound.get(name, line), line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            loads.append((node.id, node.lineno))
        elif isinstance(node, ast.Name):
            bind(node.id, node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bind((alias.asname or alias.name).split(".")[0], node.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bind(node.name, node.lineno)
        elif isinstance(node, ast.arg):
            bind(node.arg, node.lineno)
        if isinstance(node, (ast.comprehension, ast.For)):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    bind(target.id, target.lineno - 1)
    return {name for name, line in loads if first_bound.get(name, line) >= line and not hasattr(builtins, name)}


def _reads_no_dataset(tree: ast.AST) -> bool:
    """Every stream the snippet builds is on scikit-learn's bundled digits (no data folder needed)."""
    streams = set(importlib.import_module("avalanche_neuromod.benchmarks").__all__)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in streams:
            dataset = {k.arg: k.value for k in node.keywords}.get("dataset", node.args[0] if node.args else None)
            if not (isinstance(dataset, ast.Constant) and dataset.value == "digits"):
                return False
    return True


def _runs_here(code: str) -> bool:
    """Self-contained, on the bundled digits or on no dataset, and not the paper-size TSAR networks."""
    tree = ast.parse(code)
    return not _free_names(tree) and PAPER_SIZE not in code and _reads_no_dataset(tree)


RUNNABLE = [(path, line, code) for path, line, code in SNIPPETS if _runs_here(code)]


def test_the_self_contained_snippets_are_the_expected_ones():
    names = {(path.name, line) for path, line, _ in RUNNABLE}
    pages = {name for name, _ in names}
    assert len(names) >= 5 and {"index.rst", "baselines.rst", "evaluation.rst", "dynamos.rst"} <= pages


@pytest.mark.parametrize("path,line,code", RUNNABLE, ids=[f"{p.name}:{n}" for p, n, _ in RUNNABLE])
def test_self_contained_snippet_runs(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a snippet writes (a grid's cell cache) lands here
    namespace = {"__name__": "__snippet__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Avalanche's deprecations are not the snippet's
        exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
    made = [v for k, v in namespace.items() if not k.startswith("__") and not inspect.ismodule(v)]
    assert made, "the snippet ran and defined its results"
