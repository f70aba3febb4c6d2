"""Evaluation of tasks not trained yet: skipped, with one warning per evaluation call.

The rule, for every strategy and plugin of the package: an evaluation
experience whose task label the model has not been trained on yet is
skipped. It gets no metric values (no ``.../ExpNNN`` keys, no log lines),
stream-level metrics cover the evaluated experiences only, and each
``eval`` call that skips something emits one :class:`UntrainedTaskWarning`
listing what it skipped. An evaluation that holds only untrained
experiences returns the evaluator's last metrics unchanged. Experiences of
trained tasks are evaluated exactly as without the rule.

This is what makes Avalanche's periodic evaluation (``eval_every``) work for
networks that refuse task labels they never learned (CRWN's): the first
periodic evaluation runs before anything was trained, and the test stream
holds the later tasks.

"Trained" means in the model's ``known_train_tasks_labels`` (Avalanche's
``MultiTaskModule`` adds a task label there when it adapts to a training
experience, so the task being trained counts). A model without that
attribute has nothing to skip.

A strategy follows the rule with :class:`SkipUntrainedEvalMixin`, which
leaves untrained experiences out of the list ``eval`` iterates. A plugin
cannot change that list, so :class:`SkipUntrainedEvalPlugin` gives an
untrained experience an empty loader and pauses the strategy's evaluator
while it passes.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from avalanche.core import SupervisedPlugin

__all__ = [
    "SkipUntrainedEvalMixin",
    "SkipUntrainedEvalPlugin",
    "UntrainedTaskWarning",
    "split_trained",
    "trained_tasks",
    "untrained_tasks",
    "warn_skipped",
]


class UntrainedTaskWarning(UserWarning):
    """An evaluation skipped experiences whose tasks were not trained yet."""


def trained_tasks(model: Any) -> Optional[Set[int]]:
    """The task labels ``model`` was trained on, or None if it does not track them.

    :param model: a network (Avalanche's ``MultiTaskModule`` tracks them).
    """
    known = getattr(model, "known_train_tasks_labels", None)
    return None if known is None else {int(t) for t in known}


def untrained_tasks(experience: Any, trained: Optional[Set[int]]) -> List[int]:
    """The task labels of ``experience`` not in ``trained`` (none if either is unknown).

    :param experience: an Avalanche experience.
    :param trained: trained task labels, or None for "everything".
    """
    labels = getattr(experience, "task_labels", None)
    if trained is None or labels is None:
        return []
    return sorted(int(t) for t in labels if int(t) not in trained)


def split_trained(experiences: Iterable[Any], trained: Optional[Set[int]]) -> Tuple[List[Any], List[Any]]:
    """Split ``experiences`` into those to evaluate and those to skip.

    :param experiences: evaluation experiences.
    :param trained: trained task labels, or None for "everything".
    """
    kept, skipped = [], []
    for experience in experiences:
        (skipped if untrained_tasks(experience, trained) else kept).append(experience)
    return kept, skipped


def warn_skipped(skipped: Sequence[Any], trained: Optional[Set[int]]) -> None:
    """Emit the one warning of an evaluation call that skipped ``skipped``.

    :param skipped: the experiences left out.
    :param trained: the trained task labels.
    """
    if not skipped:
        return
    ids = [getattr(e, "current_experience", "?") for e in skipped]
    tasks = sorted({t for e in skipped for t in untrained_tasks(e, trained)})
    warnings.warn(
        f"evaluation skipped experience(s) {ids} of task(s) {tasks}, not trained yet "
        f"(trained tasks: {sorted(trained or ())}); they have no metric values. Train them "
        f"first, or evaluate a stream of trained tasks only.",
        UntrainedTaskWarning,
        stacklevel=3,
    )


class SkipUntrainedEvalMixin:
    """The untrained-task rule for a strategy: ``eval`` leaves untrained experiences out.

    Put it before the Avalanche template in the bases
    (``class MyStrategy(SkipUntrainedEvalMixin, SupervisedTemplate)``).
    Periodic evaluation calls ``eval`` too, so it follows the rule.
    """

    def trained_task_labels(self) -> Optional[Set[int]]:
        """The task labels evaluation accepts (default: the model's trained tasks)."""
        return trained_tasks(self.model)

    def eval(self, exp_list: Any, **kwargs: Any):
        """Avalanche's ``eval`` on the experiences of trained tasks only.

        :param exp_list: an experience or a stream (or list) of experiences.
        :param kwargs: passed to Avalanche's ``eval``.
        :return: the evaluator's last metric values.
        """
        trained = self.trained_task_labels()
        experiences = list(exp_list) if isinstance(exp_list, Iterable) else [exp_list]
        kept, skipped = split_trained(experiences, trained)
        warn_skipped(skipped, trained)
        if not kept:
            return self.evaluator.get_last_metrics()
        # Nothing skipped: Avalanche gets the caller's stream itself, unless it
        # was a one-shot iterator that the split above consumed.
        unchanged = not skipped and not isinstance(exp_list, Iterator)
        return super().eval(exp_list if unchanged else kept, **kwargs)


class SkipUntrainedEvalPlugin(SupervisedPlugin):
    """The untrained-task rule inside any Avalanche strategy (Naive, EWC, ...).

    For an untrained experience it replaces the eval loader by an empty one,
    so the model never sees the task, and pauses the strategy's evaluator
    until the next experience, so no metric is recorded for it. When every
    experience of a call was skipped the evaluator stays paused through the
    end of the call (else stream metrics would report 0 over no data) and
    resumes at this plugin's next callback. Give it to the strategy in
    ``plugins=[...]``: it must come before the evaluator, which Avalanche
    appends after the user's plugins.
    """

    def __init__(self) -> None:
        super().__init__()
        self._paused = None
        self._skipped: List[Any] = []
        self._evaluated = None

    def __getattribute__(self, name: str) -> Any:
        # Avalanche looks a callback up on every plugin before calling it: the
        # first callback after an evaluation that paused the evaluator resumes
        # it, except the two that close a skipped experience or the call.
        if name.startswith(("before_", "after_")) and name not in ("after_eval_exp", "after_eval"):
            object.__getattribute__(self, "_resume")()
        return super().__getattribute__(name)

    def _resume(self) -> None:
        evaluator, self._paused = self._paused, None
        if evaluator is not None:
            evaluator.active = True

    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        plugins = strategy.plugins
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator in plugins and plugins.index(self) > plugins.index(evaluator):
            raise ValueError(
                f"{type(self).__name__} must come before the evaluator in strategy.plugins: "
                f"pass it in the strategy's plugins=[...] argument."
            )
        self._skipped = []
        self._evaluated = None

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        trained = trained_tasks(strategy.model)
        if not untrained_tasks(strategy.experience, trained):
            self._evaluated = strategy.experience
            return
        self._skipped.append(strategy.experience)
        strategy.dataloader = []
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator is not None and evaluator.active:
            evaluator.active = False
            self._paused = evaluator

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        warn_skipped(self._skipped, trained_tasks(strategy.model))
        if self._evaluated is not None:
            self._resume()
            # Stream metrics take their name from the current experience: the
            # last evaluated one, as if the skipped ones were not in the list.
            strategy.experience = self._evaluated
        self._skipped = []
        self._evaluated = None
