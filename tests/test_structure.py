"""The repository's layout rules (which file may import which), checked on the source
with `ast`: imports among the project's modules form no cycle, no module but a script imports a
script, and files stay short."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"train", "evaluate", "bench", "mulo_experiments", "local_sgd_experiments",
           "celo2_experiments", "make_data", "convert_celo_weights", "schedule_plot",
           "stability"}
MAX_LINES = 600
# Files still over MAX_LINES, to be split; empty since tasks.py (→ layers.py, task_families.py),
# evaluate.py (→ suite.py, engine.py, baselines.py) and train.py (→ run_log.py) were split.
# A file leaves this list when it is split; the test fails if a listed file is short already.
TOO_LONG: set[str] = set()


def modules():
    return {f[:-3]: os.path.join(ROOT, f) for f in sorted(os.listdir(ROOT)) if f.endswith(".py")}


def imports(path, project):
    """The project modules imported anywhere in `path` (top level or inside a function)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(project)


def graph():
    mods = modules()
    return {m: imports(p, mods) - {m} for m, p in mods.items()}


def find_cycle(g):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(g):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_the_checks_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    g = graph()
    assert {"registry", "tasks", "pes"} <= g["train"]      # the parser sees real imports


def test_imports_form_no_cycle():
    assert find_cycle(graph()) is None, " → ".join(find_cycle(graph()))


def test_only_scripts_import_scripts():
    bad = {m: sorted(deps & SCRIPTS) for m, deps in graph().items()
           if m not in SCRIPTS and deps & SCRIPTS}
    assert not bad, f"modules importing a script: {bad}"


def test_no_module_imports_train():
    importers = sorted(m for m, deps in graph().items() if "train" in deps)
    assert not importers, f"only tests may import train.py: {importers}"


def test_files_stay_short():
    lengths = {}
    for m, p in modules().items():
        with open(p, encoding="utf-8") as f:
            lengths[m] = sum(1 for _ in f)
    too_long = {m: n for m, n in lengths.items() if n > MAX_LINES}
    unlisted = {m: n for m, n in too_long.items() if m not in TOO_LONG}
    assert not unlisted, f"over {MAX_LINES} lines: {unlisted} (split them)"
    done = sorted(TOO_LONG - set(too_long))
    assert not done, f"{done} are at most {MAX_LINES} lines now: remove them from TOO_LONG"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_exist(script):
    assert script in modules()


def test_pyproject_lists_every_module():
    """`pip install -e .` must make every module importable: py-modules names each root .py."""
    import re
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    block = text[text.index("py-modules"):]
    listed = set(re.findall(r'"([a-z0-9_]+)"', block[:block.index("]")]))
    assert listed == set(modules()), (f"missing: {sorted(set(modules()) - listed)}, "
                                      f"stale: {sorted(listed - set(modules()))}")
