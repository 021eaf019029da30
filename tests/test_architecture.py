"""The layout's rules, read from the source (DESIGN.md, "Layout"):

- click is imported only by the command-line face (xmppll/cli/);
- the XMPP streams never import discovery, and discovery never imports the streams:
  the agent (and the one-shot send) wire them together;
- neither streams nor discovery import the agent or the face;
- no import cycle between xmppll's modules, counting imports inside functions too
  (a cycle that only shows when a function runs is still a knot in the design);
- the stream parser parses through defusedxml.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xmppll"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth, except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def internal_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(path) if m in mods and m != name}
            for name, path in mods.items()}


def test_click_only_in_the_face() -> None:
    offenders = {name for name, path in modules().items()
                 if not name.startswith("xmppll.cli")
                 and any(m == "click" or m.startswith("click.") for m in imports(path))}
    assert not offenders, f"click imported outside xmppll/cli: {sorted(offenders)}"


def test_streams_and_discovery_do_not_know_each_other() -> None:
    rules = {
        "xmppll.xmpp": ("xmppll.discovery", "xmppll.agent", "xmppll.cli"),
        "xmppll.discovery": ("xmppll.xmpp", "xmppll.agent", "xmppll.cli"),
    }
    wrong = []
    for name, deps in internal_graph().items():
        for part, forbidden in rules.items():
            if name.startswith(part):
                wrong += [f"{name} -> {d}" for d in deps if d.startswith(forbidden)]
    assert not wrong, wrong


def test_no_import_cycle() -> None:
    graph = internal_graph()
    # A package's __init__ is imported with any of its modules: not a dependency edge.
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_stream_parser_parses_through_defusedxml() -> None:
    assert "defusedxml.ElementTree" in imports(modules()["xmppll.xmpp.stream"])
