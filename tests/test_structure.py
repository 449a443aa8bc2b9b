"""Structure checks: no import circles, the layering the design relies on, one-job module docstrings.

The sources are parsed with `ast`, never imported, so this file runs in about a second and
sees imports that only run inside a function.

Which imports count: every `import` / `from ... import` statement anywhere in a file, at top
level, inside functions and methods, under `try`, and under `if TYPE_CHECKING:`. A lazy import
still runs (only later), so a circle through it is a circle at run time; a TYPE_CHECKING import
does not run, but it means the two modules know each other, and the cure is the same (move the
shared name down a layer), so one simple rule covers all. Strings passed to
`importlib.import_module` are not followed (ours name only DeepSpeed's and torch's modules).
The parent package that Python runs implicitly (importing `pkg.sub` first runs
`pkg/__init__.py`) is not an edge; `from pkg import name` where `name` is defined in
`pkg/__init__.py`, or `from . import name` in `pkg/x.py`, is an explicit edge to `pkg`.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import deque
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
# The import graph: the two packages, and the benchmarks that use them. Nothing in the two
# packages may import a benchmark (asserted below), so benchmarks are importers only.
GRAPH_PACKAGES = ("bing_bert_pld", "data_prep", "benchmarks")
# Every module here must open with a one-job docstring (launch/ holds shell scripts today).
DOCSTRING_DIRS = ("bing_bert_pld", "data_prep", "benchmarks", "launch")
STDLIB = frozenset(sys.stdlib_module_names)

Graph = dict[str, dict[str, int]]  # importer -> {imported in-project module: first line}


# --------------------------------------------------------------------------- the import graph

def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Every .py file under the packages, as {dotted module name: (path, is a package)}."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            # Mid-refactor `x.py` and `x/__init__.py` can both exist; Python takes the package.
            if name not in modules or is_package:
                modules[name] = (path, is_package)
    return modules


def imported_names(module: str, is_package: bool, tree: ast.AST,
                   modules: dict[str, tuple[Path, bool]]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in `tree`, relative ones resolved.

    `from A import n` names A.n when A.n is one of `modules` (a submodule), else A itself;
    `import A.B` names A.B (its parent A runs implicitly: not named)."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `.` is the package this module is in: itself for an __init__.py.
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in modules else base, node.lineno))
    return found


class ImportGraph:
    """The in-project import edges of a set of packages, and what each module imports outside it."""

    def __init__(self, root: Path, packages: tuple[str, ...]):
        self.root = root
        self.packages = packages
        self.modules = find_modules(root, packages)
        self.edges: Graph = {name: {} for name in self.modules}
        self.external: dict[str, set[str]] = {name: set() for name in self.modules}
        # In-project names that match no file: a stale import left behind by a move.
        self.unresolved: list[str] = []
        for name, (path, is_package) in self.modules.items():
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for target, line in imported_names(name, is_package, tree, self.modules):
                if target in self.modules:
                    self.edges[name][target] = min(line, self.edges[name].get(target, line))
                elif target.split(".")[0] in packages:
                    self.unresolved.append(f"{self.where(name, line)} imports {target}")
                else:
                    self.external[name].add(target.split(".")[0])

    def where(self, module: str, line: int) -> str:
        return f"{self.modules[module][0].relative_to(self.root)}:{line}"

    def reachable(self, start: str) -> dict[str, list[str]]:
        """Every module `start` imports directly or through others, with one shortest path to it."""
        paths = {start: [start]}
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for there in sorted(self.edges[here]):
                if there not in paths:
                    paths[there] = paths[here] + [there]
                    queue.append(there)
        return paths

    def cycles(self) -> list[list[str]]:
        """One shortest circle through each module in a circle (deduplicated), self-imports too.

        Each circle is [a, b, ..., a]; the strongly connected components (Tarjan) say which
        modules are in a circle, a breadth-first search inside the component finds the circle."""
        circles: list[list[str]] = []
        seen: set[tuple[str, ...]] = set()
        for component in strongly_connected(self.edges):
            if len(component) == 1 and component[0] not in self.edges[component[0]]:
                continue
            members = set(component)
            for start in sorted(component):
                circle = self._shortest_circle(start, members)
                key = canonical(circle)
                if key not in seen:
                    seen.add(key)
                    circles.append(circle)
        return circles

    def _shortest_circle(self, start: str, members: set[str]) -> list[str]:
        previous: dict[str, str] = {}
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for there in sorted(self.edges[here]):
                if there == start:
                    path = [here]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return list(reversed(path)) + [start]
                if there in members and there not in previous:
                    previous[there] = here
                    queue.append(there)
        raise AssertionError(f"{start} is in a component but on no circle")  # Tarjan guarantees one

    def describe(self, circle: list[str]) -> str:
        """`a -> b -> a  (a.py:3, b.py:17)`: the circle and the line of each import in it."""
        lines = ", ".join(self.where(a, self.edges[a][b]) for a, b in zip(circle, circle[1:]))
        return f"{' -> '.join(circle)}  ({lines})"


def strongly_connected(edges: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def canonical(circle: list[str]) -> tuple[str, ...]:
    """The same circle read from any of its modules gives one key: rotated to its smallest name."""
    ring = circle[:-1]
    first = ring.index(min(ring))
    return tuple(ring[first:] + ring[:first])


_GRAPH: Optional[ImportGraph] = None


def project_graph() -> ImportGraph:
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = ImportGraph(ROOT, GRAPH_PACKAGES)
    return _GRAPH


# --------------------------------------------------------------------------- import tests

def test_no_module_imports_another_in_a_circle():
    graph = project_graph()
    circles = graph.cycles()
    assert not circles, "import circles (cut each by moving the shared part down a layer):\n" + \
        "\n".join(graph.describe(circle) for circle in circles)


def test_in_project_imports_name_existing_modules():
    # A module moved or split leaves no import of its old path behind (a lazy one would
    # otherwise fail only when its function first runs).
    assert not project_graph().unresolved, "\n".join(project_graph().unresolved)


def test_pld_imports_only_the_standard_library_and_numpy():
    graph = project_graph()
    module = "bing_bert_pld.pld"
    assert not graph.edges[module], f"{module} imports {sorted(graph.edges[module])}: it stays a leaf"
    assert graph.external[module] - STDLIB == {"numpy"}, sorted(graph.external[module] - STDLIB)


# The model file reads alone (STYLE.md 1): torch is its one library, and nothing it reaches,
# directly or through config and its other small leaves (batch, schema, layer_norm, pld,
# strict_dict), parses command lines, logs, touches DeepSpeed or sits in a layer above it.
# The issue's "imports only torch" is about libraries: numpy comes with pld and the schema,
# apex's fused LayerNorm is optional; which leaves it uses is not pinned, so splitting a
# leaf does not break this test.
MODEL_LIBRARIES = {"torch", "numpy", "apex"}
ABOVE_THE_MODEL = ("bing_bert_pld.data", "bing_bert_pld.run", "bing_bert_pld.glue", "bing_bert_pld.train",
                   "bing_bert_pld.engine", "bing_bert_pld.ds_config", "bing_bert_pld.cli",
                   "bing_bert_pld.metrics_log", "bing_bert_pld.hf_export", "bing_bert_pld.report")


def test_model_imports_only_torch_and_layers_below_it():
    graph = project_graph()
    module = "bing_bert_pld.model"
    assert "bing_bert_pld.config" in graph.edges[module]  # the scan sees the model's imports
    assert graph.external[module] - STDLIB == {"torch"}, sorted(graph.external[module] - STDLIB)
    reached = graph.reachable(module)
    above = [" -> ".join(path) for name, path in reached.items()
             if any(name == top or name.startswith(top + ".") for top in ABOVE_THE_MODEL)]
    assert not above, "the model reaches a layer above it: " + "; ".join(above)
    wrong = {f"{name} imports {lib}" for name in reached for lib in graph.external[name]
             if lib in ("argparse", "logging") or (lib not in STDLIB and lib not in MODEL_LIBRARIES)}
    assert not wrong, sorted(wrong)


def test_data_loader_never_imports_the_model():
    graph = project_graph()
    loaders = [name for name in graph.modules
               if name == "bing_bert_pld.data" or name.startswith("bing_bert_pld.data.")]
    assert loaders, "no bing_bert_pld.data module found"
    models = {"bing_bert_pld.model", "bing_bert_pld.glue.model"}
    found = [" -> ".join(path) for loader in loaders
             for name, path in graph.reachable(loader).items() if name in models]
    assert not found, "the loader reaches the model: " + "; ".join(found)


def test_training_package_never_imports_data_prep_or_benchmarks():
    graph = project_graph()
    wrong = [f"{graph.where(a, line)}: {a} imports {b}"
             for a, targets in graph.edges.items() for b, line in targets.items()
             if (a.startswith("bing_bert_pld") and b.split(".")[0] in ("data_prep", "benchmarks"))
             or (a.startswith("data_prep") and b.startswith("benchmarks"))]
    assert not wrong, "\n".join(wrong)


def test_cycle_finder_reports_known_circles(tmp_path):
    files = {
        "pkg/__init__.py": "from .w import g\nVERSION = 1\n",
        # Explicit import of the parent's name: an edge to pkg, so pkg -> pkg.w -> pkg.
        "pkg/w.py": "from . import VERSION\ndef g(): pass\n",
        # Importing pkg.leaf implicitly runs pkg/__init__: not an edge, so no circle here.
        "pkg/leaf.py": "import os\n",
        "pkg/x.py": "from . import y\n",
        # Lazy, inside a function: still a circle pkg.x -> pkg.y -> pkg.x.
        "pkg/y.py": "def f():\n    from .x import z\n",
        "pkg/s.py": "import pkg.s\n",  # a self-import
        "pkg/t.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import U\n",
        # `from .. import t` in a subpackage's __init__: an edge to pkg.t, closing t -> sub -> t.
        "pkg/sub/__init__.py": "from .. import t\nU = 1\n",
        "pkg/sub/deep.py": "from ..leaf import os\nfrom pkg.sub import U\n",
        "pkg/gone.py": "from .missing import a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = ImportGraph(tmp_path, ("pkg",))
    assert graph.edges["pkg.sub.deep"] == {"pkg.leaf": 1, "pkg.sub": 2}
    assert graph.edges["pkg.leaf"] == {} and graph.external["pkg.leaf"] == {"os"}
    assert graph.unresolved == ["pkg/gone.py:1 imports pkg.missing"]
    described = sorted(graph.describe(circle) for circle in graph.cycles())
    assert described == [
        "pkg -> pkg.w -> pkg  (pkg/__init__.py:1, pkg/w.py:1)",
        "pkg.s -> pkg.s  (pkg/s.py:1)",
        "pkg.sub -> pkg.t -> pkg.sub  (pkg/sub/__init__.py:1, pkg/t.py:3)",
        "pkg.x -> pkg.y -> pkg.x  (pkg/x.py:1, pkg/y.py:2)",
    ]
    # A longer circle is named once, whichever of its modules the search starts from.
    (tmp_path / "pkg/x.py").write_text("from . import leaf\nfrom . import y\n")
    (tmp_path / "pkg/leaf.py").write_text("from .y import f\n")
    (tmp_path / "pkg/y.py").write_text("def f():\n    from .x import z\n")
    circles = [c for c in ImportGraph(tmp_path, ("pkg",)).cycles() if "pkg.x" in c]
    assert circles == [["pkg.leaf", "pkg.y", "pkg.x", "pkg.leaf"], ["pkg.x", "pkg.y", "pkg.x"]]


# --------------------------------------------------------------------------- docstrings

MAX_FIRST_LINE = 110
# Words that say nothing about a module's job: with the words of its own name removed, a
# first line must keep at least two words besides these.
FILLER = {"a", "an", "and", "the", "of", "for", "to", "in", "on", "this", "module", "file",
          "package", "code", "helper", "helpers", "utility", "utilities", "utils", "util",
          "functions", "function", "misc", "various", "stuff", "init", "main", "py"}


def docstring_problem(module: str, source: str) -> Optional[str]:
    """What is wrong with a module's opening docstring line, or None when it states one job."""
    text = ast.get_docstring(ast.parse(source))
    if not text or not text.strip():
        return "no module docstring"
    lines = text.splitlines()
    first = lines[0].strip()
    if len(lines) > 1 and lines[1].strip():
        return f"first line is not the whole first paragraph (no blank line follows it): {first!r}"
    if not first.endswith("."):
        return f"first line does not end in a period: {first!r}"
    if re.search(r"[.!?][\"')`]?\s+[A-Z]", first):
        return f"first line holds more than one sentence: {first!r}"
    if len(first) > MAX_FIRST_LINE:
        return f"first line is {len(first)} characters (at most {MAX_FIRST_LINE}): {first!r}"
    words = re.findall(r"[a-z0-9]+", first.lower())
    name_words = set(re.findall(r"[a-z0-9]+", module.lower().replace("_", " ")))
    telling = [w for w in words if w not in name_words and w not in FILLER]
    if len(words) < 4 or len(telling) < 2:
        return f"first line only restates the module's name: {first!r}"
    return None


def docstring_files() -> list[Path]:
    return sorted(path for folder in DOCSTRING_DIRS for path in (ROOT / folder).rglob("*.py"))


def test_every_module_opens_with_its_one_job():
    files = docstring_files()
    assert len(files) > 50  # the walk found the packages
    problems = []
    for path in files:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        problem = docstring_problem(module, path.read_text(encoding="utf-8"))
        if problem:
            problems.append(f"{path.relative_to(ROOT)}: {problem}")
    assert not problems, "\n".join(problems)


def test_docstring_rule_rejects_each_bad_form():
    good = '"""Read the shard manifest and check it against the trainer\'s flags."""\n'
    assert docstring_problem("pkg.manifest", good) is None
    bad = {
        "import os\n": "no module docstring",
        '"""Reads shards and writes\nthem somewhere."""': "not the whole first paragraph",
        '"""Reads shards and writes them"""': "does not end in a period",
        '"""Reads the shards. Writes the manifest too."""': "more than one sentence",
        '"""' + "Reads shards " * 10 + 'and more."""': "characters (at most 110)",
        '"""Data loader."""': "only restates",
        '"""The data loader module for the package."""': "only restates",
    }
    for source, expected in bad.items():
        problem = docstring_problem("pkg.data_loader", source)
        assert problem is not None and expected in problem, (source, problem)


def test_no_shell_script_reads_a_run_directory_with_inline_python():
    """The scripts ask `python -m bing_bert_pld.run info` what a run holds; inline Python that
    opens checkpoint files would be a second reader of the layout."""
    launch = Path(__file__).resolve().parents[1] / "launch"
    scripts = sorted(launch.glob("*.sh")) + sorted(launch.glob("*.sbatch"))
    assert len(scripts) >= 8
    offending = []
    for script in scripts:
        text = script.read_text()
        if re.search(r"python\S*\"?\s+-\s", text) or re.search(r"<<-?\s*'?(PY|EOF|PYTHON)'?", text):
            offending.append(f"{script.name}: a Python heredoc")
        for snippet in re.findall(r"-c\s+(['\"])(.*?)\1", text, flags=re.S):
            if re.search(r"json|checkpoint|latest|trainer_state|run_config|manifest", snippet[1]):
                offending.append(f"{script.name}: python -c {snippet[1][:60]!r}")
    assert not offending, offending
