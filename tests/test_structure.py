"""The map in DESIGN.md, checked against the code: every module on its floor, imports only downward
(or within the floor), no import circle, DeepSpeed and torch.distributed behind their doors.

Imports are read with `ast` from every file of ct_train/ (inside functions too), nothing is run.
A new module must be given a floor here, as in DESIGN.md's table.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "ct_train"

# DESIGN.md, "The library, by floor": the highest floor first. A name is a module or a package
# (every module under it); the longest matching name decides.
FLOORS = [
    ("entry", ["ct_train.cli", "ct_train.__main__", "ct_train.bench.__main__"]),
    ("tools", ["ct_train.bench", "ct_train.interaction", "ct_train.scoring", "ct_train.plot"]),
    ("compose", ["ct_train.compose"]),
    (
        "loop",
        [
            "ct_train.trainer",
            "ct_train.run",
            "ct_train.evaluation",
            "ct_train.signals",
            "ct_train.logging",
            "ct_train.checkpoint",
            "ct_train.scorers",
        ],
    ),
    ("model", ["ct_train.engine", "ct_train.modeling"]),
    ("curricula", ["ct_train.curriculum"]),
    ("data", ["ct_train.data", "ct_train.sampler"]),
    (
        "ground",
        [
            "ct_train",
            "ct_train.config",
            "ct_train.distributed",
            "ct_train.losses",
            "ct_train.errors",
            "ct_train.io",
            "ct_train.apportion",
            "ct_train.drills",
        ],
    ),
]
LEVEL = {name: len(FLOORS) - i for i, (_, names) in enumerate(FLOORS) for name in names}
DOORS = {"deepspeed": {"ct_train.engine", "ct_train.modeling"}, "torch.distributed": {"ct_train.distributed"}}


def _modules() -> dict:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        out[name] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> set:
    """Every module name `name` imports anywhere in its file (relative imports resolved)."""
    path, is_pkg = MODULES[name]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _ours(imported: str, importer: str):
    """The ct_train module an import names (its longest known prefix), or None."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported if imported and imported != importer else None


GRAPH = {m: {t for i in _imports(m) if (t := _ours(i, m))} for m in MODULES}


def _floor(module: str) -> int:
    owner = max((n for n in LEVEL if module == n or module.startswith(n + ".")), key=len, default=None)
    if owner is None:
        pytest.fail(f"{module} has no floor: add it to DESIGN.md's table and to FLOORS here")
    return LEVEL[owner]


def upward_imports(graph: dict, floor) -> list:
    return sorted(
        f"{m} ({floor(m)}) imports {t} ({floor(t)})" for m, targets in graph.items() for t in targets
        # a package's __init__ re-exporting its own children is not an upward import
        if floor(t) > floor(m) and not t.startswith(m + ".")
    )  # fmt: skip


def find_cycles(graph: dict) -> list:
    """Depth-first search for back edges; a package's __init__ importing its own children is the
    package's re-export, not a circle."""
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if t.startswith(m + "."):
                continue
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_every_import_goes_down_or_stays_on_its_floor():
    upward = upward_imports(GRAPH, _floor)
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_no_import_circle():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("door", sorted(DOORS))
def test_deepspeed_and_torch_distributed_only_behind_their_doors(door):
    outside = sorted(
        m for m in MODULES if m not in DOORS[door] and any(i == door or i.startswith(door + ".") for i in _imports(m))
    )
    assert not outside, f"{door} imported outside {sorted(DOORS[door])}: {outside}"


def test_the_checks_find_a_planted_upward_import_and_circle():
    """The walker itself, on a planted graph (else the tests above would pass on an empty one), and
    on real edges it must see."""
    floors = {"a.top": 3, "a.mid": 2, "a.low": 1, "a.pkg": 1, "a.pkg.child": 1}
    planted = {"a.top": {"a.mid"}, "a.mid": {"a.low"}, "a.low": {"a.top"}, "a.pkg": {"a.pkg.child"}}
    assert upward_imports(planted, floors.get) == ["a.low (1) imports a.top (3)"]
    assert find_cycles(planted) == ["a.low -> a.top -> a.mid -> a.low"]
    assert find_cycles({"a.pkg": {"a.pkg.child"}, "a.pkg.child": set()}) == []
    assert {"ct_train.errors", "ct_train.sampler"} <= GRAPH["ct_train.curriculum.base"]
    assert "ct_train.engine" in GRAPH["ct_train.run"] and _floor("ct_train.run") > _floor("ct_train.engine")
    assert "deepspeed" in {i.split(".")[0] for i in _imports("ct_train.engine")}
