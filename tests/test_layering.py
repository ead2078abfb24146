"""The import graph of core/, rsp/, launch/ and eval/, read from the source with ast (every import,
function-local ones included): no cycle anywhere; the packages import only downwards (launch, eval,
rsp, core: core/ is the base and imports none of them); rsp/ imports neither launch/ nor eval/ (nor
Hydra or submitit); eval/ never reaches the trainer (rsp.train and the modules only it needs); and
every function-local import says why it is there (a comment on or above it: a heavy library whose
import only some calls pay for). An import that merely dodges a cycle has no such reason."""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "rsp", "launch", "eval", "localslurm")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted ("launch.submit")
    target: str  # imported project module, dotted ("launch.plan")
    path: Path
    lines: tuple[int, int]  # first and last line of the statement
    local: bool  # inside a function


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The project module `name` is (or, for `from package import thing`, lives in), else None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                else:
                    assert not child.level, f"{path}:{child.lineno}: the project imports absolutely"
                    names = [f"{child.module}.{alias.name}" for alias in child.names] + [child.module or ""]
                targets = {resolve(n) for n in names} - {None, module}
                lines = (child.lineno, child.end_lineno or child.lineno)
                out.extend(Import(module, t, path, lines, local) for t in sorted(targets))
                if not targets and local:  # a third-party import inside a function: still needs its reason
                    out.append(Import(module, "", path, lines, local))
            visit(child, local)

    visit(tree, False)
    return out


IMPORTS = [i for module, path in MODULES.items() for i in imports_of(module, path)]
GRAPH: dict[str, set[str]] = {m: set() for m in MODULES}
for i in IMPORTS:
    if i.target:
        GRAPH[i.source].add(i.target)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in GRAPH[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def trainer_modules() -> set[str]:
    """rsp.train and the rsp modules that only it needs: every importer outside eval/ is one of them."""
    importers: dict[str, set[str]] = {m: set() for m in MODULES}
    for source, targets in GRAPH.items():
        for target in targets:
            if not source.startswith("eval"):
                importers[target].add(source)
    trainer = {"rsp.train"}
    grew = True
    while grew:
        grew = False
        for module, by in importers.items():
            if module.startswith("rsp.") and module not in trainer and by and by <= trainer:
                trainer.add(module)
                grew = True
    return trainer


def test_the_graph_was_read():
    assert len(MODULES) > 60 and "launch.evaluations.schedule" in MODULES
    assert "launch.plan" in GRAPH["launch.submit"] and "eval.registry" in GRAPH["eval.protocol"]
    assert any(i.local for i in IMPORTS)  # function-local imports are part of the graph


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_launch_reads_top_down():
    """The front door above planning, above submission and the jobs, above backends, sweeps and run
    directories: nothing imports the front door, and the lower floors never reach an upper one."""
    upper = {"launch.submit", "launch.plan", "launch.dispatch", "launch.job", "launch.follow", "launch.status"}
    upper |= {m for m in MODULES if m.startswith(("launch.evaluations", "launch.validation"))}
    lower = (
        "launch.config",
        "launch.snapshot",
        "launch.rundir",
        "launch.backends",
        "launch.slurm_queries",
        "launch.sweeps.expand",
        "launch.requeue",
    )
    assert [m for m, targets in GRAPH.items() if "launch.submit" in targets] == []
    assert {m: sorted(reachable(m) & upper) for m in lower if reachable(m) & upper} == {}
    assert [m for m, targets in GRAPH.items() if "launch.plan" in targets] == ["launch.submit"]


def test_rsp_imports_neither_launch_nor_eval_nor_a_scheduler():
    crossing = [f"{i.source} -> {i.target} ({i.path.name}:{i.lines[0]})" for i in IMPORTS if i.source.startswith("rsp")]
    assert [c for c in crossing if " -> launch" in c or " -> eval" in c] == []
    for module, path in MODULES.items():
        if module.startswith("rsp"):
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [n for n in names if n.split(".")[0] in ("submitit", "hydra")], module


def test_eval_never_reaches_the_trainer():
    trainer = trainer_modules()
    # the rule is not vacuous (rsp.optim is not trainer-only: planning resolves the schedule to check rungs)
    assert {"rsp.train", "rsp.data", "rsp.metrics"} <= trainer
    reached = {m: reachable(m) & trainer for m in MODULES if m.startswith("eval")}
    assert {m: sorted(t) for m, t in reached.items() if t} == {}


def comment_lines(path: Path) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.start[0] for t in tokens if t.type == tokenize.COMMENT}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_function_local_import_says_why(package):
    """A comment on the import, or on the line above the group of imports it belongs to."""
    local = [i for i in IMPORTS if i.local and i.source.startswith(package)]
    import_lines = {(i.path, n) for i in local for n in range(i.lines[0], i.lines[1] + 1)}
    comments = {path: comment_lines(path) for path in {i.path for i in local}}
    missing = []
    for i in local:
        first, last = i.lines
        while (i.path, first - 1) in import_lines:  # the group of imports this one belongs to
            first -= 1
        if not comments[i.path] & set(range(first - 1, last + 1)):
            missing.append(f"{i.path.relative_to(REPO)}:{i.lines[0]} imports {i.target or 'a library'} inside a function")
    assert sorted(set(missing)) == []


def test_eval_knows_nothing_of_the_launchers_layout():
    """Which records belong to which run or sweep, and which runs were pruned, is the launcher's join
    (launch/results.py): eval/ works on records alone, so no eval module names a run directory's files."""
    layout = ("run.json", "pruned.json", "evals/step_", "parents[", "sweeps/")
    found = [f"{m}: {word}" for m, path in MODULES.items() if m.startswith("eval") for word in layout if word in path.read_text()]
    assert found == []


# The house by folder, from the top: each package imports only packages after it in this order.
HOUSE = ("localslurm", "launch", "eval", "rsp", "core")


def folder_arrows() -> set[tuple[str, str]]:
    return {(i.source.split(".")[0], i.target.split(".")[0]) for i in IMPORTS if i.target} - {(p, p) for p in PACKAGES}


def test_folders_import_only_downwards():
    """0 upward arrows (and so 0 circles) between the project's packages: localslurm (the development
    cluster) above launch, launch above eval, eval above rsp (the method), rsp above core (the base)."""
    assert set(PACKAGES) == set(HOUSE)
    upward = sorted((a, b) for a, b in folder_arrows() if HOUSE.index(a) > HOUSE.index(b))
    assert upward == []
    assert {"launch", "eval", "rsp"} <= {a for a, b in folder_arrows() if b == "core"}  # the rule is not vacuous


def test_core_is_the_base_and_the_runtime_never_imports_the_development_cluster():
    assert sorted(b for a, b in folder_arrows() if a == "core") == []
    assert sorted(a for a, b in folder_arrows() if b == "localslurm") == []


def module_level_reach(start: str) -> set[str]:
    """The project modules importing `start` loads: module-level imports only, followed through."""
    seen, todo = {start}, [start]
    while todo:
        source = todo.pop()
        for i in IMPORTS:
            if i.source == source and i.target and not i.local and i.target not in seen:
                seen.add(i.target)
                todo.append(i.target)
    return seen


@pytest.mark.parametrize("job", ["launch.job", "eval.run"])
def test_a_job_that_finds_its_generated_data_in_place_never_loads_the_scene_painters(job):
    """rsp.scenes and rsp.natural import scipy.ndimage and PIL at module level (~0.35 CPU-s): every
    training and evaluation job would pay for them, though only writing generated videos draws scenes."""
    assert job in MODULES and "rsp.data" in module_level_reach("launch.job")
    assert not module_level_reach(job) & {"rsp.scenes", "rsp.natural", "rsp.kinetics_raw"}
