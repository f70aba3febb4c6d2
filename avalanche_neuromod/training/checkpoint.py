"""Checkpoints: Avalanche's own helpers made to work, and one state layer for every strategy.

Two ways to checkpoint a strategy, both atomic on disk (a temporary file in
the same folder, ``fsync``, then ``os.replace``) and both checked on load (a
truncated or corrupted file is a :class:`CheckpointError` naming the file):

- **Avalanche's format.** :func:`save_checkpoint` and
  :func:`maybe_load_checkpoint` have the signatures of
  ``avalanche.checkpointing``'s and call them: the whole strategy is pickled
  with dill (model, optimiser, plugins, evaluator and its metric history,
  loggers, random states). On this stack Avalanche's own ``save_checkpoint``
  fails for every strategy; :func:`checkpoint_compat` is the fix, applied
  only for the duration of the call. See ``docs/checkpointing.rst`` for the
  cause and what upstream would need to change.
- **State dictionaries.** :func:`strategy_state_dict` and
  :func:`load_strategy_state` work for any ``SupervisedTemplate``: the
  model's ``state_dict`` and which parameters are frozen, the optimiser's
  state keyed by parameter name, the state of every plugin that has
  ``state_dict``/``load_state_dict``, the strategy's clock and the torch,
  CUDA, NumPy and Python random states. :func:`write_checkpoint` /
  :func:`read_checkpoint` store them with ``torch.save`` and load them with
  ``weights_only=True``. :class:`CheckpointMixin` gives a strategy
  ``state_dict``, ``load_state_dict``, ``save_checkpoint`` and
  ``load_checkpoint`` on top of them; every strategy of the package uses it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import sys
import uuid
import zipfile
from typing import Any, BinaryIO, Callable, Collection, Dict, Iterator, List, Optional, Tuple, TypeVar, Union

import dill
import numpy as np
import torch
from avalanche import checkpointing as _avalanche_checkpointing

__all__ = [
    "CheckpointError",
    "CheckpointMixin",
    "checkpoint_compat",
    "load_strategy_state",
    "maybe_load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "strategy_state_dict",
    "write_checkpoint",
]

PathLike = Union[str, os.PathLike]
T = TypeVar("T")

FORMAT = "avalanche_neuromod.strategy_state"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or a state that does not fit the strategy."""


# ---------------------------------------------------------------------------
# The fix for Avalanche's helpers
# ---------------------------------------------------------------------------

def _resolve(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _hidden_from_its_package(cls: type) -> bool:
    """True for a class importable by name whose module its package does not expose.

    ``torch.optim`` imports ``torch.optim.sgd`` and then deletes the name
    ``sgd`` from its namespace (likewise ``optimizer``, ``adam``, ...). The
    class stays importable (``sys.modules`` holds its module), but dill looks
    modules up through the package's attributes, does not find it and
    pickles the class by value instead of by reference.
    """
    module_name = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None)
    if not module_name or not qualname or module_name == "__main__" or "<locals>" in qualname:
        return False
    module = sys.modules.get(module_name)
    if module is None or _resolve(module, qualname) is not cls:
        return False
    package_name, _, child = module_name.rpartition(".")
    package = sys.modules.get(package_name) if package_name else None
    return package is not None and getattr(package, child, None) is not module


@contextlib.contextmanager
def checkpoint_compat() -> Iterator[None]:
    """Make Avalanche's ``save_checkpoint`` work on this stack, for the duration of a block.

    ``avalanche.checkpointing.save_checkpoint`` pickles the strategy with
    dill. dill fails to find ``torch.optim.sgd.SGD`` (and every other torch
    optimiser) by reference because ``torch.optim`` deletes its submodules'
    names, so it pickles the optimiser's class, and its base
    ``torch.optim.Optimizer``, by value. The base class holds a method
    wrapped by ``typing_extensions.deprecated``, whose globals are
    ``typing_extensions``' namespace; dill copies that namespace, which
    holds the sentinel ``_marker = sentinel("sentinel")``; the sentinel
    pickles itself by the name ``typing_extensions.sentinel``, which is the
    class, not the object: ``PicklingError: Can't pickle sentinel``.

    Inside this block dill pickles such classes by reference, as the
    standard pickle does; every other object is pickled as before. Loading
    needs nothing (a reference is resolved by import), except with
    Avalanche's ``unique_objects``, which it pickles to compare them. The
    change is undone on exit, also on error; it is not thread-safe.

    Example::

        from avalanche.checkpointing import save_checkpoint
        with checkpoint_compat():
            save_checkpoint(strategy, "checkpoint.pkl")
    """
    dispatch = dill.Pickler.dispatch
    had_entry = type in dispatch
    dill_save_type = dispatch[type]

    def save_type(pickler, obj):
        if _hidden_from_its_package(obj):
            pickler.save_global(obj)
        else:
            dill_save_type(pickler, obj)

    dispatch[type] = save_type
    try:
        yield
    finally:
        if had_entry:
            dispatch[type] = dill_save_type
        else:
            del dispatch[type]


# ---------------------------------------------------------------------------
# Atomic writes and checked reads
# ---------------------------------------------------------------------------

def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a new file next to ``path``, then move it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


_FIX = ("The file was damaged after it was written (checkpoints are replaced atomically, "
        "so an interrupted save leaves the previous file in place): delete it to start "
        "over, or restore an earlier copy.")


def _verify_archive(path: str) -> None:
    """Check that ``path`` is a complete ``torch.save`` archive whose records match their CRC-32."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a complete checkpoint: it is empty, truncated or not written by "
            f"torch.save. {_FIX}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:
                    continue  # written with torch's CRC-32 turned off: nothing to check
                with archive.open(info) as member:
                    while member.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupted ({err}). {_FIX}") from err


def write_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    """Write ``state`` with ``torch.save`` atomically.

    The data goes to a temporary file in the same folder, is flushed to disk,
    and only then replaces ``path``: a process killed while saving leaves the
    previous checkpoint intact.

    :param state: what to save (tensors, numbers, strings, lists, dicts).
    :param path: destination file.
    """
    _atomic_write(path, lambda f: torch.save(state, f))


def read_checkpoint(path: PathLike, map_location: Any = None) -> Dict[str, Any]:
    """Load a file written by :func:`write_checkpoint` (``weights_only=True``).

    :param path: the checkpoint file.
    :param map_location: as in ``torch.load``.
    :raises FileNotFoundError: no such file.
    :raises CheckpointError: the file is truncated, corrupted, or a pickled
        strategy from Avalanche's ``save_checkpoint``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}.")
    _verify_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path} holds objects that weights_only loading refuses. A pickled strategy "
                f"from Avalanche's save_checkpoint is loaded with "
                f"avalanche_neuromod.training.maybe_load_checkpoint(strategy, path); a state "
                f"written by write_checkpoint must hold only tensors, numbers, strings, lists, "
                f"tuples and dicts (check the plugins' state_dict)."
            ) from err
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}). {_FIX}") from err


# ---------------------------------------------------------------------------
# Avalanche's helpers, fixed and atomic
# ---------------------------------------------------------------------------

def save_checkpoint(strategy: Any, fname: Union[PathLike, BinaryIO],
                    exclude: Optional[Collection[str]] = None) -> None:
    """``avalanche.checkpointing.save_checkpoint`` under :func:`checkpoint_compat`, written atomically.

    Same arguments and file format as Avalanche's: the file is read back
    with :func:`maybe_load_checkpoint` or Avalanche's own. Call it between
    experiences, not inside the training loop.

    :param strategy: any Avalanche strategy.
    :param fname: destination file (written atomically), or an open binary file.
    :param exclude: strategy attributes to leave out, as in Avalanche.
    """
    def write(f) -> None:
        with checkpoint_compat():
            _avalanche_checkpointing.save_checkpoint(strategy, f, exclude=exclude)

    if isinstance(fname, (str, os.PathLike)):
        _atomic_write(fname, write)
    else:
        write(fname)


def maybe_load_checkpoint(strategy: T, fname: Union[PathLike, BinaryIO], map_location: Any = None,
                          unique_objects: Any = None) -> Tuple[T, int]:
    """``avalanche.checkpointing.maybe_load_checkpoint`` with a clear error for a damaged file.

    Returns ``(strategy, n)``: the strategy restored from the file and the
    number of training experiences it had finished, or the strategy
    unchanged and 0 when the file does not exist (the first run).

    :param strategy: a freshly built strategy of the same kind.
    :param fname: a file written by :func:`save_checkpoint`.
    :param map_location: as in Avalanche (a device, a string or a map).
    :param unique_objects: objects not to unpickle again, as in Avalanche.
    :raises CheckpointError: the file is truncated or corrupted.
    """
    if isinstance(fname, (str, os.PathLike)):
        if not os.path.exists(fname):
            return strategy, 0
        _verify_archive(os.fspath(fname))
    try:
        with checkpoint_compat():  # Avalanche pickles unique_objects to compare them
            return _avalanche_checkpointing.maybe_load_checkpoint(
                strategy, fname, map_location=map_location, unique_objects=unique_objects)
    except (EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{fname} cannot be read ({type(err).__name__}: {err}). {_FIX}") from err


# ---------------------------------------------------------------------------
# The state layer
# ---------------------------------------------------------------------------

def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _load_rng_state(state: Dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state({
            "bit_generator": s["bit_generator"],
            "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]},
            "has_gauss": s["has_gauss"],
            "gauss": s["gauss"],
        })
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def _plugin_keys(plugins: List[Any]) -> Dict[str, Any]:
    """Plugins with ``state_dict``/``load_state_dict``, keyed ``ClassName#k`` (k-th of its class)."""
    keyed: Dict[str, Any] = {}
    counts: Dict[str, int] = {}
    for plugin in plugins:
        if callable(getattr(plugin, "state_dict", None)) and callable(getattr(plugin, "load_state_dict", None)):
            name = type(plugin).__qualname__
            keyed[f"{name}#{counts.get(name, 0)}"] = plugin
            counts[name] = counts.get(name, 0) + 1
    return keyed


def _optimizer_state(strategy: Any) -> Optional[Dict[str, Any]]:
    optimizer = getattr(strategy, "optimizer", None)
    if optimizer is None:
        return None
    names = {id(p): n for n, p in strategy.model.named_parameters()}
    groups = [[names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups]
    if any(n is None for group in groups for n in group):
        if any(optimizer.state.values()):
            raise CheckpointError(
                f"{type(optimizer).__name__} holds state for parameters outside strategy.model, "
                f"which a state checkpoint cannot name: keep every optimised parameter in the "
                f"model, or override state_dict/load_state_dict in the strategy."
            )
        return None  # a stateless placeholder (CRWN before its first task): nothing to restore
    return {"state_dict": optimizer.state_dict(), "param_names": groups}


def strategy_state_dict(strategy: Any) -> Dict[str, Any]:
    """Everything needed to resume a ``SupervisedTemplate`` between experiences.

    The model's ``state_dict`` and the names of its frozen parameters; the
    optimiser's ``state_dict`` with the names of the parameters of each group
    (``None`` when it optimises something outside the model and holds no
    state); the names in Avalanche's ``optimized_param_id``; the
    ``state_dict`` of every plugin that has one; the clock's counters; the
    torch, CUDA, NumPy and Python random states. Not included: the
    evaluator's metric history and the loggers (Avalanche's
    :func:`save_checkpoint` keeps those).

    :param strategy: any Avalanche ``SupervisedTemplate``.
    """
    model = strategy.model
    optimized = getattr(strategy, "optimized_param_id", None)
    clock = getattr(strategy, "clock", None)
    known = getattr(model, "known_train_tasks_labels", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "strategy": type(strategy).__qualname__,
        "model": model.state_dict(),
        "frozen": [n for n, p in model.named_parameters() if not p.requires_grad],
        "known_train_tasks": sorted(int(t) for t in known) if known is not None else None,
        "optimizer": _optimizer_state(strategy),
        "optimized_param_id": list(optimized) if isinstance(optimized, dict) else None,
        "plugins": {key: plugin.state_dict() for key, plugin in _plugin_keys(strategy.plugins).items()},
        "clock": {k: v for k, v in vars(clock).items() if isinstance(v, int) and not isinstance(v, bool)}
        if clock is not None else {},
        "rng": _rng_state(),
    }


def _load_optimizer(strategy: Any, saved: Dict[str, Any]) -> None:
    named = dict(strategy.model.named_parameters())
    missing = [n for group in saved["param_names"] for n in group if n not in named]
    if missing:
        raise CheckpointError(
            f"the checkpoint's optimiser state refers to parameters the model lacks: {missing[:5]}. "
            f"Build the strategy with the same model (a growing model must grow in load_state_dict)."
        )
    optimizer = strategy.optimizer
    # Point the groups at the same named parameters as when it was saved: the
    # fresh optimiser was built over whatever the model held at construction.
    optimizer.state.clear()
    optimizer.param_groups.clear()
    for names, group in zip(saved["param_names"], saved["state_dict"]["param_groups"]):
        settings = {k: v for k, v in group.items() if k != "params"}
        optimizer.add_param_group({**settings, "params": [named[n] for n in names]})
    optimizer.load_state_dict(saved["state_dict"])


def load_strategy_state(strategy: Any, state: Dict[str, Any]) -> None:
    """Restore what :func:`strategy_state_dict` saved into a freshly built strategy.

    The model grows first if it can (CRWN's networks do, in
    ``load_state_dict``); frozen parameters are frozen again; the optimiser
    is pointed at the saved parameters and given their state; plugins must
    match the saved ones by class and order.

    :param strategy: a strategy built like the one saved.
    :param state: a dictionary from :func:`strategy_state_dict`.
    :raises CheckpointError: the state does not fit the strategy.
    """
    if "model" not in state:
        raise CheckpointError("not a strategy state: it has no 'model' entry.")
    if state.get("version", VERSION) > VERSION:
        raise CheckpointError(
            f"the checkpoint has format version {state['version']}, newer than this "
            f"avalanche_neuromod ({VERSION}): upgrade the package."
        )
    model = strategy.model
    model.load_state_dict(state["model"])
    if "frozen" in state:
        frozen = set(state["frozen"])
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
    if state.get("known_train_tasks") is not None and hasattr(model, "known_train_tasks_labels"):
        model.known_train_tasks_labels = set(state["known_train_tasks"])
    if state.get("optimizer") is not None:
        _load_optimizer(strategy, state["optimizer"])
    if state.get("optimized_param_id") is not None and hasattr(strategy, "optimized_param_id"):
        # Avalanche matches only the model's current parameters against it:
        # names that have left the model since are dropped.
        named = dict(model.named_parameters())
        strategy.optimized_param_id = {n: named[n] for n in state["optimized_param_id"] if n in named}
    saved_plugins = state.get("plugins", {})
    plugins = _plugin_keys(strategy.plugins)
    if set(saved_plugins) != set(plugins):
        raise CheckpointError(
            f"the checkpoint holds state for plugins {sorted(saved_plugins)} and this strategy "
            f"has {sorted(plugins)}: build it with the same plugins, in the same order."
        )
    for key, plugin_state in saved_plugins.items():
        plugins[key].load_state_dict(plugin_state)
    for key, value in state.get("clock", {}).items():
        setattr(strategy.clock, key, value)
    rng = state.get("rng")
    if rng is None and "torch_rng" in state:  # files written by CRWN 0.1
        rng = {"torch": state["torch_rng"]}
    if rng:
        _load_rng_state(rng)


class CheckpointMixin:
    """``state_dict`` / ``load_state_dict`` / ``save_checkpoint`` / ``load_checkpoint`` for a strategy.

    Put it before the Avalanche template in the bases
    (``class MyStrategy(CheckpointMixin, SupervisedTemplate)``). A strategy
    with more state of its own extends :meth:`state_dict` and
    :meth:`load_state_dict` (calling ``super()``).
    """

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume between experiences (:func:`strategy_state_dict`)."""
        return strategy_state_dict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (:func:`load_strategy_state`).

        :param state: a dictionary from :meth:`state_dict`.
        """
        load_strategy_state(self, state)

    def save_checkpoint(self, path: PathLike) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (:func:`write_checkpoint`).

        :param path: file to write.
        """
        write_checkpoint(self.state_dict(), path)

    def load_checkpoint(self, path: PathLike, map_location: Any = None) -> int:
        """Resume from a file written by :meth:`save_checkpoint`.

        :param path: file to read (loaded with ``weights_only=True``).
        :param map_location: as in ``torch.load``.
        :return: the number of training experiences finished before saving.
        :raises CheckpointError: the file is truncated, corrupted or does not fit.
        """
        self.load_state_dict(read_checkpoint(path, map_location=map_location))
        return int(self.clock.train_exp_counter)
