"""The package layering of DESIGN.md, checked on the source: every ``import`` in ``src/openlbm`` (function-local
ones included) is parsed with ``ast``, and the packages' dependency graph must follow the rules below."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "openlbm"
PACKAGES = ("data", "envs", "models", "policies", "train", "eval", "serve", "configs", "study")
"""The top-level packages of DESIGN.md's layout (top-level modules such as types.py and cli.py are not packages)."""

MUST_NOT_IMPORT: dict[str, set[str]] = {
    # data/: "must not know about models" (nor what is built on them)
    "data": {"models", "policies", "train", "eval", "serve", "envs", "configs"},
    # envs/: "must not know about training"
    "envs": {"train", "eval", "serve", "configs"},
    # models/: pure nn.Modules, "must not touch files, hubs, loggers": nothing that does
    "models": {"data", "envs", "policies", "train", "eval", "serve", "configs"},
    # policies/: "must not own a training loop"
    "policies": {"train", "eval", "serve", "envs", "configs"},
    # train/: "must not know about simulators"; evaluation is handed to it as a callable (train.loop.EvalFn)
    "train": {"envs", "eval", "serve"},
    # eval/ uses policies, envs and serve's client; it never reaches into training
    "eval": {"train"},
    # serve/: "must not import training code"
    "serve": {"train", "eval", "envs", "configs"},
    # configs/: plain frozen dataclasses and presets, below the code that uses them
    "configs": {"train", "eval", "serve", "envs", "study"},
    # study/: composes training and evaluation runs (above both); it never serves
    "study": {"serve"},
}
"""package -> the packages it must never import (DESIGN.md's "must not" column, as imports)."""

TYPES_MAY_IMPORT: set[str] = set()
"""types.py, the data contract, imports no openlbm package ("must not import torch.nn models")."""


@dataclass(frozen=True)
class Edge:
    """One import of package ``dst`` from a file of package (or top-level module) ``src``."""

    src: str
    dst: str
    where: str
    """``path:line`` of the import statement."""


def _imported_modules(tree: ast.AST, module: str, is_pkg: bool) -> Iterator[tuple[str, int]]:
    """Absolute dotted names of every import in ``tree`` (at any depth), resolving relative imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from openlbm import train` imports the package train
                yield f"{target}.{alias.name}", node.lineno


def _owner(module: str) -> str | None:
    """``openlbm.<pkg>...`` -> pkg (a package or a top-level module name); None outside openlbm."""
    parts = module.split(".")
    if parts[0] != "openlbm" or len(parts) < 2:
        return None
    return parts[1]


def import_edges(root: Path) -> list[Edge]:
    """Every cross-owner import under ``root`` (a package dir laid out like src/openlbm)."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        is_pkg = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_pkg else rel.parts)
        src = _owner(module) if not is_pkg or module.count(".") else None
        if src is None:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, line in _imported_modules(tree, module, is_pkg):
            dst = _owner(target)
            if dst is not None and dst != src:
                edges.append(Edge(src, dst, f"{path.relative_to(root.parent)}:{line}"))
    return list(dict.fromkeys(edges))  # `from a import b` names a and a.b: one edge


def forbidden(edges: list[Edge], packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """One line per import that breaks MUST_NOT_IMPORT or TYPES_MAY_IMPORT."""
    bad = [f"{e.where}: {e.src}/ imports {e.dst}/" for e in edges if e.dst in MUST_NOT_IMPORT.get(e.src, set())]
    bad += [f"{e.where}: types.py imports {e.dst}/" for e in edges
            if e.src == "types" and e.dst in packages and e.dst not in TYPES_MAY_IMPORT]
    return bad


def package_cycles(edges: list[Edge], packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Each cycle in the package graph as ``a -> b -> a (a/x.py:3, b/y.py:7)``, found by depth-first search."""
    graph: dict[str, dict[str, str]] = {p: {} for p in packages}
    for e in edges:
        if e.src in graph and e.dst in graph:
            graph[e.src].setdefault(e.dst, e.where)
    cycles: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                cyc = path[path.index(nxt):]
                i = cyc.index(min(cyc))  # one rotation per cycle
                cycles.add(tuple(cyc[i:] + cyc[:i]))
            else:
                visit(nxt, [*path, nxt])

    for p in packages:
        visit(p, [p])
    out = []
    for cyc in sorted(cycles):
        hops = [*cyc, cyc[0]]
        where = ", ".join(graph[a][b] for a, b in zip(hops, hops[1:], strict=False))
        out.append(f"{' -> '.join(hops)} ({where})")
    return out


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    found = import_edges(SRC)
    assert any(e.src == "eval" and e.dst == "policies" for e in found), "the import scan found nothing"
    return found


def test_train_imports_nothing_from_eval_or_serve(edges: list[Edge]) -> None:
    bad = [f"{e.where}: train/ imports {e.dst}/" for e in edges if e.src == "train" and e.dst in ("eval", "serve")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_packages(edges: list[Edge]) -> None:
    cycles = package_cycles(edges)
    assert not cycles, "import cycles between packages:\n" + "\n".join(cycles)


def test_design_must_not_rules(edges: list[Edge]) -> None:
    bad = forbidden(edges)
    assert not bad, "imports that DESIGN.md's layout forbids:\n" + "\n".join(bad)


def test_the_checks_see_local_relative_and_package_imports(tmp_path: Path) -> None:
    """The scanner itself: a planted function-local import, a relative import and `from openlbm import pkg`."""
    root = tmp_path / "openlbm"
    for pkg in ("train", "eval", "models", "configs"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "train" / "loop.py").write_text("def f():\n    from openlbm.eval.runner import x\n")
    (root / "models" / "net.py").write_text("from ..configs import presets\n")
    (root / "configs" / "presets.py").write_text("from openlbm import models\n")
    (root / "types.py").write_text("import openlbm.models.net\n")
    found = import_edges(root)
    assert forbidden(found) == [
        "openlbm/models/net.py:1: models/ imports configs/",
        "openlbm/train/loop.py:2: train/ imports eval/",
        "openlbm/types.py:1: types.py imports models/",
    ]
    assert package_cycles(found) == [
        "configs -> models -> configs (openlbm/configs/presets.py:1, openlbm/models/net.py:1)"
    ]
