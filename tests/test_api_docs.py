"""Every public name of the package is documented: a docstring on each module, on each class and
function a module exports (``__all__``), and on each public method and property of those classes
(its own or one it inherits); and every public module is on the API page (``docs/api.rst``)."""
import importlib
import inspect
import pkgutil
from pathlib import Path

import avalanche_neuromod

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.rst"


def _modules():
    for info in pkgutil.walk_packages(avalanche_neuromod.__path__, "avalanche_neuromod."):
        yield info.name, info.ispkg, importlib.import_module(info.name)


def _documented(cls, name) -> bool:
    """True when ``cls.name`` or the same name on a base class has a docstring."""
    for klass in cls.__mro__:
        member = vars(klass).get(name)
        member = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if member is not None and inspect.getdoc(member):
            return True
    return False


def _undocumented_members(cls):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (property, staticmethod, classmethod)) or inspect.isfunction(member):
            if not _documented(cls, name):
                yield name


def _undocumented():
    missing, seen = [], set()
    for module_name, _, module in _modules():
        if not inspect.getdoc(module):
            missing.append(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue  # constants and type aliases are documented by a comment or string in the source;
                # a name a package re-exports from its module is checked once
            seen.add(id(obj))
            if not inspect.getdoc(obj):
                missing.append(f"{module_name}.{name}")
            if inspect.isclass(obj):
                missing += [f"{module_name}.{name}.{member}" for member in _undocumented_members(obj)]
    return sorted(missing)


def test_every_public_name_has_a_docstring():
    assert _undocumented() == []


def test_the_check_finds_an_undocumented_method():
    class Plugin:
        """Documented."""

        def documented(self):
            """Yes."""

        def bare(self):
            pass

        @property
        def bare_property(self):
            return 1

        def _private(self):
            pass

    class Child(Plugin):
        """Documented too."""

        def documented(self):  # inherits its base's docstring
            return 2

    assert sorted(_undocumented_members(Plugin)) == ["bare", "bare_property"]
    assert sorted(_undocumented_members(Child)) == []


def test_every_public_module_is_on_the_api_page():
    page = API_PAGE.read_text()
    absent = [name for name, is_package, _ in _modules()
              if not is_package and not name.rsplit(".", 1)[-1].startswith("_")
              and f"automodule:: {name}\n" not in page]
    assert absent == []
