"""Errors stay a small declared hierarchy, and no code swallows everything.

A bare ``except:``, ``except Exception`` or ``except BaseException`` (alone or in a tuple)
would turn a bug of ours into a misleading message or a silent skip. Allow-list: none.
The one shape accepted is cleanup on the failure path that re-raises the same exception
unchanged (the handler ends in a bare ``raise`` and has no other raise, return, break or
continue): it catches nothing, it is a ``finally`` for failures only.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import leukoedge.errors as errors

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(REPO / "leukoedge").rglob("*.py"), *(REPO / "plugins").rglob("*.py"),
                  *(REPO / "fuzz").rglob("*.py")])
BROAD = {"Exception", "BaseException"}


def reraises_unchanged(handler: ast.ExceptHandler) -> bool:
    """The handler ends in a bare ``raise`` and cannot leave any other way."""
    if not handler.body or not (isinstance(handler.body[-1], ast.Raise)
                                and handler.body[-1].exc is None):
        return False
    exits = (ast.Raise, ast.Return, ast.Break, ast.Continue)
    inner = [n for stmt in handler.body[:-1] for n in ast.walk(stmt)]
    return not any(isinstance(n, exits) for n in inner)


def broad_handlers(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ExceptHandler) or reraises_unchanged(node):
            continue
        if node.type is None:
            found.append((node.lineno, "bare except:"))
            continue
        names = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        for n in names:
            name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(
                n, ast.Attribute) else None
            if name in BROAD:
                found.append((node.lineno, f"except {name}"))
    return found


def test_sources_were_found() -> None:
    assert len(SOURCES) > 20 and any(p.parts[-2] == "commands" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_catch_all_handlers(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert broad_handlers(tree) == [], f"{path.relative_to(REPO)}: catch the declared types"


def test_the_checker_catches_what_it_should() -> None:
    code = ("try: pass\nexcept: pass\ntry: pass\nexcept (ValueError, Exception): pass\n"
            "try: pass\nexcept builtins.BaseException: pass\ntry: pass\nexcept OSError: pass\n"
            "try: pass\nexcept BaseException:\n    cleanup()\n    raise\n"  # allowed
            "try: pass\nexcept Exception as e:\n    raise Other() from e\n"  # relabels
            "try: pass\nexcept Exception:\n    if x:\n        return\n    raise\n")  # swallows
    assert [k for _, k in broad_handlers(ast.parse(code))] == [
        "bare except:", "except Exception", "except BaseException", "except Exception",
        "except Exception"]


def test_every_declared_error_derives_from_leukoedge_error() -> None:
    declared = [c for _, c in inspect.getmembers(errors, inspect.isclass)
                if c.__module__ == errors.__name__]
    assert errors.LeukoedgeError in declared and len(declared) >= 10
    for cls in declared:
        assert issubclass(cls, errors.LeukoedgeError), cls
        assert isinstance(cls.exit_code, int)


def base_name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)


def raisable(trees: list[ast.AST]) -> set[str]:
    """The error classes library code may raise: those of ``leukoedge.errors`` and the
    classes defined in ``trees`` that derive from one of them (typed errors that carry
    what the CLI shows, such as ``PrecisionRejected(ExportError)``)."""
    names = {c for c, o in vars(errors).items() if isinstance(o, type)}
    bases = {n.name: {base_name(b) for b in n.bases} for tree in trees
             for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    grown = True
    while grown:
        more = {c for c, bs in bases.items() if c not in names and bs & names}
        names |= more
        grown = bool(more)
    return names


def test_an_error_class_counts_as_declared_only_through_a_declared_base() -> None:
    tree = ast.parse("class A(ExportError): ...\nclass B(A): ...\nclass C(ValueError): ...\n"
                     "class D(errors.DataError): ...\n")
    got = raisable([tree])
    assert {"A", "B", "D"} <= got and "C" not in got


def test_raise_statements_raise_declared_errors() -> None:
    """Library code raises LeukoedgeError subclasses; a few builtins are allowed where the
    caller is code, not a user (a programming error: bad argument types or values)."""
    allowed_builtin = {"ValueError", "TypeError", "KeyError", "NotImplementedError"}
    library = [p for p in SOURCES if "fuzz" not in p.parts]
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in library}
    declared = raisable(list(trees.values()))
    bad = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            name = base_name(node.exc.func if isinstance(node.exc, ast.Call) else node.exc)
            if name and name[0].isupper() and name not in declared | allowed_builtin | {
                    "Exit", "BadParameter"}:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} raises {name}")
    assert bad == []
