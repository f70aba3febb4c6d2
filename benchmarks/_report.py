"""What every benchmark script records next to its numbers, and how it writes them.

Shared by the scripts in this folder, so that each script holds its grid and
its targets and nothing else: the machine and code the numbers came from
(:func:`result_header`), the exact command, tables (:func:`markdown_table`,
:func:`text_table`), targets checked against what was measured
(:func:`target`, :func:`target_lines`), the opening of a results section
(:func:`section_opening`), the JSON file and the script's own delimited
section of ``docs/results.md`` (:func:`publish`).

Paths are recorded portably: what the JSON and the results page show is a
command any reader can run from the repository root, and no path of the
machine that ran it. The rule (:func:`portable_path`), first match wins:

1. a path inside the repository is written relative to the repository root
   (``benchmarks/results/crwn_mnist.json``; a data root inside the checkout
   too);
2. the data root (``--dataset-root``, or ``$AVALANCHE_NEUROMOD_DATA`` when
   the option is not given) and anything under it are written from
   ``$AVALANCHE_NEUROMOD_DATA`` (``$AVALANCHE_NEUROMOD_DATA/MNIST/raw/...``),
   whatever their real location, which is never stored: a reader sets the
   variable to their own copy;
3. any other absolute path becomes ``<outside-repo>/NAME``: only its last
   component is kept;
4. the interpreter is written relative to the repository
   (``.venv/bin/python``) when it lives inside it, ``python`` otherwise.

On the command line, a token is a path when it is absolute, holds a
separator or names an existing file; relative ones are read from the
current folder, so the recorded command runs from the repository root
wherever the script was started.

Data files recorded with their sizes and checksums (:func:`data_files`) are
relative to the data root. :func:`write_json` and :func:`update_results_md`
apply the rule once more to everything they write, as a safety net for
paths a script puts into free text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = REPO_ROOT / "docs" / "results.md"

DATA_ROOT_ENV = "AVALANCHE_NEUROMOD_DATA"
"""The package's data-root variable (``avalanche_neuromod.benchmarks.DATA_ROOT_ENV``),
repeated so that parsing arguments does not import torch and Avalanche."""

DATA_ROOT_TEXT = "$" + DATA_ROOT_ENV
"""How a data root outside the repository is written (rule 2 of the module docstring)."""
OUTSIDE_REPO = "<outside-repo>"
"""The prefix of any other absolute path (rule 3), whose last component alone is kept."""
EMBEDDED_DIGITS = "scikit-learn's digits (embedded, no download)"
"""What a result records as its data when it read no data root."""

__all__ = ["REPO_ROOT", "RESULTS_MD", "DATA_ROOT_ENV", "DATA_ROOT_TEXT", "OUTSIDE_REPO", "EMBEDDED_DIGITS",
           "add_dataset_root_argument", "check_mnist_root", "machine_info", "git_info", "command_line", "portable_path",
           "portable", "shell_quote",
           "data_files", "update_results_md", "write_json", "result_header", "machine_line", "section_opening",
           "markdown_table", "text_table", "target", "target_lines", "machine_was_busy", "publish",
           "add_scaling_arguments", "scaling_options", "scaling_text"]

PathLike = Union[str, os.PathLike]

# Data roots this process accepted (check_mnist_root); portable() writes them
# from $AVALANCHE_NEUROMOD_DATA even where a script puts one in free text.
_DATA_ROOTS: List[Path] = []


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
    _DATA_ROOTS.extend(p for p in _spellings(path) if p not in _DATA_ROOTS)
    return path


def git_info() -> Dict[str, Any]:
    """The commit, and the uncommitted edits the numbers also belong to."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout

    return {"commit": git("rev-parse", "HEAD").strip(), "dirty_files": git("status", "--porcelain").splitlines()}


def _first_processor() -> Dict[str, str]:
    """The fields of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    fields: Dict[str, str] = {}
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break  # the first processor is enough
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """The processor's name as the system reports it (``/proc/cpuinfo``'s model name on Linux)."""
    return _first_processor().get("model name") or platform.processor()


def cpu_details() -> Dict[str, Any]:
    """Family, model and the vector extensions that decide CPU speed here (two "AMD EPYC" can differ 1.3x).

    Empty where ``/proc/cpuinfo`` is missing.
    """
    fields = _first_processor()
    if not fields:
        return {}
    flags = set(fields.get("flags", "").split())
    details: Dict[str, Any] = {k.replace(" ", "_"): int(fields[k]) for k in ("cpu family", "model")
                               if fields.get(k, "").isdigit()}
    details.update({flag: flag in flags for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")})
    return details


def cpu_details_text(details: Optional[Dict[str, Any]]) -> str:
    """``", family 25 model 17, AVX-512 with BF16"`` from :func:`cpu_details`' record; ``""`` without one."""
    if not details:
        return ""
    parts = [f"family {details['cpu_family']} model {details['model']}"] if "cpu_family" in details else []
    if details.get("avx512f"):
        parts.append("AVX-512" + (" with BF16" if details.get("avx512_bf16") else ""))
    elif details.get("avx2"):
        parts.append("AVX2, no AVX-512")
    return "".join(", " + p for p in parts)


def machine_info() -> Dict[str, Any]:
    """CPU, memory, library versions, load and code version of this run."""
    import avalanche
    import psutil
    import torch

    import avalanche_neuromod

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "cpu_details": cpu_details(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "avalanche_neuromod": avalanche_neuromod.__version__,
        "load_average_at_start": list(os.getloadavg()),
        "git": git_info(),
    }


def _spellings(path: PathLike) -> List[Path]:
    """A path as written (made absolute) and with its links resolved."""
    path = Path(path).expanduser()
    return [Path(os.path.abspath(path)), path.resolve()]


def _data_roots(extra: Iterable[Optional[PathLike]] = ()) -> List[Path]:
    """Known data roots: ``extra``, those accepted so far, ``$AVALANCHE_NEUROMOD_DATA``."""
    roots = [spelling for r in extra if r for spelling in _spellings(r)] + _DATA_ROOTS
    if os.environ.get(DATA_ROOT_ENV):
        roots += _spellings(os.environ[DATA_ROOT_ENV])
    return list(dict.fromkeys(roots))


def portable_path(path: PathLike, data_root: Optional[PathLike] = None, *, is_data_root: bool = False) -> str:
    """``path`` as the results may show it (the rule of the module docstring).

    :param path: absolute, or relative to the current directory.
    :param data_root: the run's data root, if known beyond the ones
        :func:`check_mnist_root` accepted and ``$AVALANCHE_NEUROMOD_DATA``.
    :param is_data_root: ``path`` is itself the data root, so it is written
        ``$AVALANCHE_NEUROMOD_DATA`` unless it lies inside the repository.
    """
    spellings = _spellings(path)
    for full in spellings:
        if full.is_relative_to(REPO_ROOT):
            return full.relative_to(REPO_ROOT).as_posix()
    if is_data_root:
        return DATA_ROOT_TEXT
    for root in _data_roots([data_root]):
        for full in spellings:
            if full.is_relative_to(root):
                rest = full.relative_to(root).as_posix()
                return DATA_ROOT_TEXT if rest == "." else f"{DATA_ROOT_TEXT}/{rest}"
    return f"{OUTSIDE_REPO}/{spellings[0].name}"


def shell_quote(text: str) -> str:
    """Shell-quote a command token, leaving ``$AVALANCHE_NEUROMOD_DATA`` to the shell."""
    head, variable, rest = text.partition(DATA_ROOT_TEXT)
    if not variable:
        return shlex.quote(text)
    return (shlex.quote(head) if head else "") + f'"{DATA_ROOT_TEXT}"' + (shlex.quote(rest) if rest else "")


def _is_path_token(token: str) -> bool:
    """Whether a command-line token names a file or folder (absolute, with a separator, or existing)."""
    return token.startswith(("/", "~")) or os.sep in token or os.path.exists(token)


def command_line(argv: Optional[Sequence[str]] = None, script: Optional[PathLike] = None) -> str:
    """The command that is running, as a reader runs it from the repository root.

    Paths in it follow the module docstring's rule: the value of
    ``--dataset-root`` is ``$AVALANCHE_NEUROMOD_DATA`` (or relative, inside
    the repository), the script and repository paths are relative.

    :param argv: the script's arguments (default: ``sys.argv[1:]``); pass
        them when ``main(argv)`` is called from Python rather than a shell.
    :param script: the script (default: ``sys.argv[0]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    script = sys.argv[0] if script is None else script
    python = Path(os.path.abspath(sys.executable))  # not resolved: keep the venv, not its base interpreter
    tokens = [python.relative_to(REPO_ROOT).as_posix() if python.is_relative_to(REPO_ROOT) else "python",
              portable_path(script)]
    data_value = False
    for token in map(str, argv):
        option, eq, value = token.partition("=")
        if data_value:
            tokens.append(portable_path(token, is_data_root=True))
        elif eq and option == "--dataset-root":
            tokens.append(f"{option}={portable_path(value, is_data_root=True)}")
        elif eq and option.startswith("--") and _is_path_token(value):
            tokens.append(f"{option}={portable_path(value)}")
        elif _is_path_token(token):
            tokens.append(portable_path(token))
        else:
            tokens.append(token)
        data_value = token == "--dataset-root"
    return " ".join(shell_quote(t) for t in tokens)


_ROOT_END = r"(?=[/\s\"'`),;:\]]|$)"


def _replace_roots(text: str) -> str:
    """Every known root inside ``text`` written portably (rules 1 and 2)."""
    # A root of one component ("/") would match every path: such a data root
    # is left to portable_path, which sees whole paths.
    roots = [(REPO_ROOT, None)] + [(root, DATA_ROOT_TEXT) for root in _data_roots()
                                    if len(root.parts) > 1 and not root.is_relative_to(REPO_ROOT)]
    for root, replacement in sorted(roots, key=lambda r: -len(str(r[0]))):
        if replacement is None:
            # inside the repository: drop the prefix, the rest is repository-relative
            text = re.sub(re.escape(str(root)) + r"/", "", text)
            text = re.sub(re.escape(str(root)) + _ROOT_END, ".", text)
        else:
            text = re.sub(re.escape(str(root)) + _ROOT_END, lambda _: replacement, text)
    return text


def portable(value: Any) -> Any:
    """``value`` (JSON-like) with every known root in its strings written portably.

    Strings that are a whole absolute path take :func:`portable_path`; roots
    inside free text (a markdown line, a message) are replaced in place.
    """
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, Path):
        return portable_path(value)
    if isinstance(value, str):
        if value.startswith("/") and "\n" not in value and " " not in value:
            return portable_path(value)
        return _replace_roots(value)
    return value


def data_files(root: PathLike, pattern: str = "MNIST/raw/*") -> List[Dict[str, Any]]:
    """The data files a run read: path relative to the data root, size, md5.

    :param root: the data root.
    :param pattern: glob of the files, relative to ``root``.
    """
    root = Path(root)
    files = []
    for path in sorted(p for p in root.glob(pattern) if p.is_file()):
        md5 = hashlib.md5()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                md5.update(chunk)
        files.append({"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size,
                      "md5": md5.hexdigest()})
    return files


def update_results_md(section: str, start: str, end: str, path: Path = RESULTS_MD) -> None:
    """Replace the section between the ``start`` and ``end`` markers; other scripts own the rest.

    :param section: the new section, markers included.
    :param start: the opening HTML comment.
    :param end: the closing HTML comment.
    :param path: the markdown file.
    """
    section = _replace_roots(section)
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


def result_header(argv: Optional[Sequence[str]], script: PathLike, dataset_root: Optional[PathLike]) -> Dict[str, Any]:
    """What every result file starts with: when, the command, the data (portably) and the machine.

    :param argv: the script's arguments (None: ``sys.argv[1:]``).
    :param script: the script's ``__file__``.
    :param dataset_root: the data root the run read; None for scikit-learn's embedded digits.
    """
    return {
        "timestamp_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv, script=script),
        "dataset_root": (portable_path(dataset_root, is_data_root=True) if dataset_root is not None
                         else EMBEDDED_DIGITS),
        "data_files": data_files(dataset_root) if dataset_root is not None else [],
        "machine": machine_info(),
    }


def write_json(result: Dict[str, Any], path: Path) -> None:
    """Write ``result`` atomically (a killed run never leaves half a file), paths made portable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(portable(result), indent=2) + "\n")
    tmp.replace(path)


def load_previous(path: Path, settings: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The runs, commands, machine, figures and notes (``how_run``) of an earlier result file, for ``--append``.

    An empty record where there is no file.

    :param path: the result file.
    :param settings: this invocation's settings that decide the scale; the file's must be the same.
    :param defaults: the value of a setting in files written before it existed.
    """
    if not path.exists():
        return {"runs": [], "commands": [], "machine": None, "figures": [], "how_run": [], "peak_rss_mb": None}
    previous = json.loads(path.read_text())
    for name, value in settings.items():
        theirs = previous["settings"].get(name, (defaults or {}).get(name))
        if theirs != value:
            option = "--" + name.replace("_", "-")
            raise SystemExit(f"--append: {portable_path(path)} holds runs with {option} {theirs}, this "
                             f"invocation {value}; runs of different streams or scales cannot be summarised "
                             f"together. Write to another --out.")
    return {"runs": previous["runs"], "commands": previous.get("commands", [previous["command"]]),
            "machine": previous.get("machine"), "figures": previous.get("figures", []),
            "how_run": previous.get("how_run", []), "peak_rss_mb": previous.get("peak_rss_mb")}


# Reporting -------------------------------------------------------------------------------------


def machine_line(machine: Dict[str, Any], threads: Optional[int] = None) -> str:
    """One results-page line naming the machine a result came from.

    :param machine: :func:`machine_info`'s record.
    :param threads: torch threads of the run (default: the recorded ones).
    """
    gpu = "a CUDA GPU available" if machine.get("cuda_available") else "no GPU"
    threads = machine.get("torch_threads") if threads is None else threads
    cpu = machine["cpu_model"] + cpu_details_text(machine.get("cpu_details"))
    return (f"- Machine: {machine['cpu_count']} CPU cores ({cpu}), {gpu}, torch {machine['torch']} "
            f"with {threads} threads, avalanche-lib {machine['avalanche']}.")


def figure_lines(figures: Sequence[str]) -> List[str]:
    """Markdown image lines for figures written under ``docs/`` (paths as :func:`portable_path` gives them)."""
    return [f"![{Path(f).stem}]({Path(f).relative_to('docs') if f.startswith('docs/') else f})" for f in figures]


def section_opening(start: str, title: str, result: Dict[str, Any], *, data: str,
                    threads: Optional[int] = None) -> List[str]:
    """The lines every results section starts with: marker, title, when and by which command, data, machine.

    :param start: the section's opening marker.
    :param title: the section title (without ``##``).
    :param result: a result holding :func:`result_header`'s entries (``commands`` if
        several runs were merged, else ``command``).
    :param data: what the run read, for the ``Data`` line.
    :param threads: torch threads of the run, if not the recorded ones.
    """
    commands = result.get("commands") or [result["command"]]
    script = commands[-1].split()[1] if len(commands[-1].split()) > 1 else "the script"
    return [start, f"## {title}", "", f"Measured {result['timestamp_utc']} with `{script}`:", "", "```", *commands,
            "```", "", f"- Data: {data}", machine_line(result["machine"], threads)]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None) -> List[str]:
    """A markdown table's lines.

    :param header: column titles.
    :param rows: cells (formatted already, or anything ``str`` shows well).
    :param align: one letter per column, ``l`` or ``r`` (default: all left).
    """
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align has {len(align)} letters for {len(header)} columns.")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def text_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The same table for a terminal: columns padded to their widest cell."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def target(name: str, met: bool, measured: str, **where: Any) -> Dict[str, Any]:
    """One target of an issue, checked: what was asked, what was measured, whether it was met.

    :param name: the target as the issue states it.
    :param met: whether the measurement meets it.
    :param measured: the measured value(s), as text.
    :param where: what it was checked on (``stream="permuted"``, ...).
    """
    return {"target": name, "measured": measured, "met": bool(met), **where}


def target_lines(targets: Sequence[Dict[str, Any]], *, markdown: bool = True) -> List[str]:
    """Targets as a markdown table (target, measured, met) or as terminal lines; none: no lines (no empty table)."""
    if not targets:
        return []
    def name(t: Dict[str, Any]) -> str:
        where = ", ".join(str(v) for k, v in t.items() if k not in ("target", "measured", "met"))
        return f"{where}: {t['target']}" if where else t["target"]

    if not markdown:
        return [f"[{'met' if t['met'] else 'NOT met'}] {name(t)}: {t['measured']}" for t in targets]
    return markdown_table(["target", "measured", "result"],
                          [[name(t), t["measured"], "met" if t["met"] else "**NOT met**"] for t in targets])


BUSY_LOAD_MARGIN = 1.0
"""A 1-minute load average above the CPU count plus this, before a timed step, marks the machine as busy."""


def machine_was_busy(load_averages: Iterable[Optional[float]], cpu_count: Optional[int] = None) -> bool:
    """Whether other processes loaded the machine while a run was timed (its own threads count for up to
    ``cpu_count``).

    :param load_averages: 1-minute load averages taken before each timed step.
    :param cpu_count: CPU cores (default: this machine's).
    """
    loads = [v for v in load_averages if v is not None]
    return bool(loads) and max(loads) > (cpu_count or os.cpu_count() or 1) + BUSY_LOAD_MARGIN


def section_markers(name: str, label: Optional[str] = None) -> Tuple[str, str]:
    """The delimiters of a script's section of docs/results.md; a label gives a grid a section of its own.

    :param name: the script's section name (``"compare"``, ``"dynamos"``, ...).
    :param label: the grid's label (None or empty: the script's main section).
    """
    key = f"{name}:{label}" if label else name
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def check_label(parser: argparse.ArgumentParser, label: Optional[str]) -> None:
    """Refuse a ``--label`` that would not make a clean section marker and file name."""
    if label and not label.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--label takes letters, digits, '-' and '_', got {label!r}.")


def publish(result: Dict[str, Any], out: Path, section: Optional[str], start: str, end: str) -> None:
    """Write the JSON and, unless ``section`` is None, the script's section of docs/results.md.

    :param result: the whole result.
    :param out: the JSON file.
    :param section: the markdown section (markers included); None leaves the docs alone.
    :param start: its opening marker.
    :param end: its closing marker.
    """
    write_json(result, out)
    print(f"Wrote {portable_path(out)}")
    if section is not None:
        update_results_md(section, start, end)
        print(f"Updated {portable_path(RESULTS_MD)}")


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that run a grid script's cells on Ray and its CRWN tasks in parallel (docs/scaling.rst)."""
    group = parser.add_argument_group("scaling (docs/scaling.rst)")
    group.add_argument("--ray", action="store_true",
                       help="run the grid's cells as Ray tasks: on a local Ray (all of this machine's cores) "
                            "unless --ray-address names a cluster. Needs pip install 'avalanche-neuromod[ray]'.")
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="the Ray cluster to run on (implies --ray), e.g. auto or ray://head:10001; every "
                            "node needs the package and the data at the same --dataset-root.")
    group.add_argument("--threads", type=int, default=1,
                       help="torch threads per cell (default 1); the same value gives the same results serially "
                            "and on Ray.")
    group.add_argument("--parallel-tasks", choices=("processes", "ray"), default=None,
                       help="CRWN cells (final protocol) train their tasks in parallel workers: a local process "
                            "pool or Ray tasks; the results equal the sequential ones.")
    group.add_argument("--task-workers", type=int, default=None,
                       help="workers of --parallel-tasks processes (default: the CPU count).")


def scaling_options(args: argparse.Namespace) -> Dict[str, Any]:
    """``run_grid``'s keyword arguments from :func:`add_scaling_arguments`'s options."""
    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}.")
    return {"executor": "ray" if args.ray or args.ray_address else "serial", "ray_address": args.ray_address,
            "threads": args.threads, "task_backend": args.parallel_tasks, "task_workers": args.task_workers}


def scaling_text(options: Dict[str, Any]) -> str:
    """How a grid ran, in words, for the results' scale line."""
    where = ("cells as Ray tasks" + (" on a cluster" if options.get("ray_address") else " on a local Ray")
             if options["executor"] == "ray" else "cells one after the other")
    tasks = f"; CRWN tasks in parallel ({options['task_backend']})" if options.get("task_backend") else ""
    return f"{where}, {options['threads']} torch thread(s) per cell{tasks}"
