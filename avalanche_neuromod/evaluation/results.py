"""Turn Avalanche's metric dictionaries into an accuracy matrix and summary numbers.

The accuracy matrix ``A`` has one row per evaluation (normally: after
training experience ``i``) and one column per test experience ``j``;
``A[i, j]`` is the accuracy on experience ``j`` after training experience
``i``. From it:

- average accuracy: ``mean_j A[T, j]`` over the final row;
- forgetting of experience ``j``: ``A[j, j] - A[T, j]`` (accuracy right after
  learning it minus final accuracy; Avalanche's definition);
- backward transfer: ``mean_{j<T} (A[T, j] - A[j, j])``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["ACC_PREFIX", "ContinualResults", "accuracy_matrix", "results_table"]

ACC_PREFIX = "Top1_Acc_Exp/eval_phase/"
_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/(?P<stream>[^/]+)/(?:Task(?P<task>\d+)/)?Exp(?P<exp>\d+)$")


def _parse(key: str, stream: str):
    m = _KEY.match(key)
    if m is None or m.group("stream") != stream:
        return None
    return int(m.group("exp"))


def accuracy_matrix(
    results: Union[Sequence[Mapping[str, float]], Mapping[str, tuple]],
    stream: str = "test_stream",
    n_experiences: Optional[int] = None,
) -> np.ndarray:
    """Build the accuracy matrix from Avalanche's metric values.

    :param results: either the list of dictionaries returned by
        ``strategy.eval(test_stream)`` (one per evaluation, in order), or the
        evaluator's ``get_all_metrics()`` (key -> (steps, values)), in which
        case row ``i`` is the ``i``-th recorded value of each experience.
    :param stream: the evaluated stream's name.
    :param n_experiences: number of columns; inferred when None.
    :return: float array ``(n_evaluations, n_experiences)`` with NaN where an
        experience was not evaluated.

    Avalanche's ``strategy.eval`` returns the last value of every metric the
    evaluator ever logged: after evaluating only some experiences, the
    others keep their earlier values in the dictionary (and in the row).
    Evaluate every experience of interest each time, or mask those entries.
    """
    columns: Dict[int, List[float]] = {}
    if isinstance(results, Mapping):
        for key, value in results.items():
            exp = _parse(key, stream)
            if exp is not None:
                columns[exp] = list(value[1])
        n_rows = max((len(v) for v in columns.values()), default=0)
        rows = [[columns[e][i] if i < len(columns[e]) else np.nan for e in sorted(columns)] for i in range(n_rows)]
        exps = sorted(columns)
    else:
        parsed = []
        for res in results:
            row = {}
            for key, value in res.items():
                exp = _parse(key, stream)
                if exp is not None:
                    row[exp] = float(value)
            parsed.append(row)
        exps = sorted(set().union(*parsed)) if parsed else []
        rows = [[row.get(e, np.nan) for e in exps] for row in parsed]
    if not exps:
        raise ValueError(
            f"no '{ACC_PREFIX}{stream}/...' accuracy found: build the strategy with "
            f"an evaluator that has accuracy_metrics(experience=True) (e.g. "
            f"make_evaluator()) and pass what strategy.eval({stream}) returned."
        )
    width = n_experiences if n_experiences is not None else max(exps) + 1
    matrix = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        for e, v in zip(exps, row):
            if e < width:
                matrix[i, e] = v
    return matrix


@dataclass
class ContinualResults:
    """An accuracy matrix with the summary numbers derived from it.

    :param matrix: ``A[i, j]``, accuracy on experience ``j`` after training ``i``.
    :param name: a label for tables and plots (e.g. the strategy).
    :param extras: other numbers to show in tables (seconds, params/task...).
    """

    matrix: np.ndarray
    name: str = ""
    extras: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_eval(cls, results, name: str = "", stream: str = "test_stream",
                  n_experiences: Optional[int] = None, **extras) -> "ContinualResults":
        """Build from what ``strategy.eval`` returned after each experience.

        :param results: see :func:`accuracy_matrix`.
        :param name: label.
        :param stream: evaluated stream name.
        :param n_experiences: number of columns (default: inferred).
        :param extras: extra numbers for tables.
        """
        return cls(accuracy_matrix(results, stream, n_experiences), name, dict(extras))

    @property
    def final_accuracies(self) -> np.ndarray:
        """Accuracy on every experience after the last evaluation."""
        return self.matrix[-1]

    @property
    def average_accuracy(self) -> float:
        """Mean final accuracy over the experiences evaluated at the end."""
        return float(np.nanmean(self.final_accuracies))

    @property
    def forgetting(self) -> np.ndarray:
        """``A[j, j] - A[T, j]`` for each experience ``j`` trained before the last."""
        t = self.matrix.shape[0] - 1
        n = min(t, self.matrix.shape[1])
        return np.array([self.matrix[j, j] - self.matrix[t, j] for j in range(n)])

    @property
    def average_forgetting(self) -> float:
        """Mean forgetting over the experiences trained before the last (0 if none)."""
        f = self.forgetting
        return float(np.nanmean(f)) if len(f) else 0.0

    @property
    def bwt(self) -> float:
        """Backward transfer: minus the average forgetting."""
        return -self.average_forgetting

    def accuracy_curve(self) -> np.ndarray:
        """Average accuracy over the experiences seen so far, after each row."""
        return np.array(
            [np.nanmean(self.matrix[i, : i + 1]) for i in range(self.matrix.shape[0])]
        )

    def summary(self) -> Dict[str, float]:
        """Average accuracy, forgetting and BWT, plus the extras."""
        out = {
            "avg_accuracy": self.average_accuracy,
            "avg_forgetting": self.average_forgetting,
            "bwt": self.bwt,
        }
        out.update(self.extras)
        return out

    def to_markdown(self, digits: int = 4) -> str:
        """The accuracy matrix as a markdown table (rows: after training i)."""
        header = "| after \\ on | " + " | ".join(f"exp {j}" for j in range(self.matrix.shape[1])) + " |"
        sep = "|---" * (self.matrix.shape[1] + 1) + "|"
        lines = [header, sep]
        for i, row in enumerate(self.matrix):
            cells = ["" if np.isnan(v) else f"{v:.{digits}f}" for v in row]
            lines.append(f"| exp {i} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def results_table(results: Sequence[ContinualResults], digits: int = 4) -> str:
    """A markdown table with one row per method: accuracy, forgetting, BWT, extras.

    :param results: one :class:`ContinualResults` per method.
    :param digits: decimals shown.
    """
    extra_keys: List[str] = []
    for r in results:
        for k in r.extras:
            if k not in extra_keys:
                extra_keys.append(k)
    cols = ["method", "avg accuracy", "avg forgetting", "BWT"] + extra_keys
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        s = r.summary()
        # "+ 0.0" turns a negative zero (exactly no forgetting) into "0.000".
        cells = [r.name or "-"] + [f"{s[k] + 0.0:.{digits}f}" for k in ("avg_accuracy", "avg_forgetting", "bwt")]
        for k in extra_keys:
            v = r.extras.get(k)
            cells.append("" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
