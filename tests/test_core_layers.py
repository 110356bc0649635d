"""The core's layering, checked on the source: dependencies point one way and never form a circle.

The stages of the user's path are packages (``lora_studio/core/__init__.py`` draws the picture):
base ← data ← train ← estimate, chat ← export, evaluate. A module may import its own package, the
base and any package on a lower level — never one on its own level or above, and never through its
own package's ``__init__`` (which imports every submodule: a circle at import time). Every import
counts, at the top of a module, inside a function or under ``TYPE_CHECKING``: a lazy import is
still a dependency, and "import it inside the function" is how circles hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "lora_studio" / "core"

#: The stage packages, by level: a package may import only packages on a lower level.
PACKAGE_LEVELS = {"data": 1, "train": 2, "estimate": 3, "chat": 3, "export": 4, "evaluate": 4}
#: The base modules (``core/*.py``), by level among themselves.
BASE_LEVELS = {
    "errors": 0,
    "paths": 0,
    "faults": 0,
    "display_check": 0,
    "llamacpp": 0,
    "atomic": 1,
    "config": 2,
    "cache": 3,
    "models": 3,
    "runs": 3,
    "doctor": 4,
}


def core_modules(core: Path = CORE) -> dict[str, Path]:
    """Dotted name → file, for every module of the core package at ``core``."""
    modules = {}
    for path in sorted(core.rglob("*.py")):
        parts = path.relative_to(core.parent.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every core module ``path`` imports, anywhere in the file (``from P import sub`` → ``P.sub``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules and name != "lora_studio.core"}


def place(name: str) -> tuple[str, int]:
    """(package or "base", level) of a core module."""
    parts = name.split(".")[2:]
    if parts and parts[0] in PACKAGE_LEVELS:
        return parts[0], PACKAGE_LEVELS[parts[0]]
    return "base", -1


def layering_problems(modules: dict[str, Path]) -> list[str]:
    problems = []
    for name, path in modules.items():
        package, level = place(name)
        for imported in sorted(imports_of(path, modules)):
            other, other_level = place(imported)
            if package == "base":
                if other != "base":
                    problems.append(f"{name} (base) imports {imported} (the {other} stage)")
                    continue
                mine, theirs = BASE_LEVELS[name.rsplit(".", 1)[-1]], BASE_LEVELS[imported.rsplit(".", 1)[-1]]
                if theirs >= mine and imported != name:
                    problems.append(f"{name} (base level {mine}) imports {imported} (base level {theirs})")
            elif other == package:
                if imported == f"lora_studio.core.{package}" and path.name != "__init__.py":
                    problems.append(f"{name} imports its own package's __init__; import the submodule")
            elif other != "base" and other_level >= level:
                problems.append(
                    f"{name} ({package}, level {level}) imports {imported} ({other}, level {other_level})"
                )
    return problems


def circles(modules: dict[str, Path]) -> list[list[str]]:
    graph = {name: imports_of(path, modules) for name, path in modules.items()}
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the current path, 2 done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state[nxt] == 1:
                found.append([*trail[trail.index(nxt) :], nxt])
            elif state[nxt] == 0:
                visit(nxt, [*trail, nxt])
        state[name] = 2

    for name in graph:
        if state[name] == 0:
            visit(name, [name])
    return found


def test_every_base_module_has_a_level_and_every_package_a_docstring():
    modules = core_modules()
    base = {n.rsplit(".", 1)[-1] for n in modules if place(n)[0] == "base" and n != "lora_studio.core"}
    assert base == set(BASE_LEVELS), "add the new base module to BASE_LEVELS (and to core/__init__'s picture)"
    packages = {p.name for p in CORE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(PACKAGE_LEVELS)
    for package in sorted(packages):
        doc = ast.get_docstring(ast.parse((CORE / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 30, f"core/{package}/__init__.py: say what the stage does"


def test_dependencies_point_down_the_stages():
    assert layering_problems(core_modules()) == []


def test_no_import_circles():
    assert circles(core_modules()) == []


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("train/engine.py", "from lora_studio.core.export import plan", "(train, level 2) imports"),
        ("config.py", "from lora_studio.core.data import formats", "(base) imports"),
        ("runs.py", "from lora_studio.core import doctor", "(base level 3) imports"),
        ("estimate/request.py", "from lora_studio.core.chat import model", "(estimate, level 3) imports"),
    ],
)
def test_the_checks_catch_an_upward_import(tmp_path, module, line, expected):
    """The checks themselves: a copy of the core with one upward import added fails them."""
    import shutil

    copy = tmp_path / "lora_studio" / "core"
    shutil.copytree(CORE, copy)
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    problems = layering_problems(core_modules(copy))
    assert any(expected in problem for problem in problems), problems
    assert layering_problems(core_modules(CORE)) == []


def test_the_circle_check_finds_a_lazy_back_import(tmp_path):
    """engine imports trainer (lazily); trainer importing engine back, even inside a function, is a circle."""
    import shutil

    copy = tmp_path / "lora_studio" / "core"
    shutil.copytree(CORE, copy)
    trainer = copy / "train" / "trainer.py"
    back = "\n\ndef _late():\n    from lora_studio.core.train.engine import TrainingRun\n\n    return TrainingRun\n"
    trainer.write_text(trainer.read_text(encoding="utf-8") + back, encoding="utf-8")
    found = circles(core_modules(copy))
    assert any(
        {"lora_studio.core.train.engine", "lora_studio.core.train.trainer"} <= set(c) for c in found
    ), found
