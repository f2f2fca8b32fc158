"""Layers point one way, and no module of ``src/sdtune`` imports itself through others.

Built from the source (``ast``), so every import counts: module level, inside functions, and under
``TYPE_CHECKING``. A module's layer is decided by its longest prefix in ``LAYERS``; a module may import its own
layer and the layers below. A new top-level module or package must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# bottom (0) to top; a module may import from its own layer and lower ones only
LAYERS: dict[str, int] = {
    # base: no sdtune imports above them
    "sdtune": 0, "sdtune.errors": 0, "sdtune.atomic": 0, "sdtune.typed_yaml": 0, "sdtune.helptext": 0,
    "sdtune.devices": 0, "sdtune.stopping": 0, "sdtune.preset_names": 0, "sdtune.writable": 0, "sdtune.words": 0,
    # the config, and what reads the files a run wrote (sdtune.run_folder: the one reader of a run folder)
    "sdtune.config": 1, "sdtune.config_sections": 1, "sdtune.config_output_sections": 1, "sdtune.config_errors": 1,
    "sdtune.config_base": 1, "sdtune.config_loss_terms": 1,
    "sdtune.config_options": 1, "sdtune.config_resume": 1,
    "sdtune.output_folders": 1,
    "sdtune.run_folder": 1, "sdtune.run_status": 1,
    "sdtune.models": 2,
    "sdtune.data": 3,
    "sdtune.training": 4,
    "sdtune.inference": 5, "sdtune.evaluation": 5, "sdtune.recipes": 5, "sdtune.toy": 5,
    "sdtune.engine": 5,  # runs sdtune command lines as units of work (personalize's subjects, the job queue)
    "sdtune.commands": 6, "sdtune.cli": 6, "sdtune.__main__": 6, "sdtune.server": 6, "sdtune.jobs": 6,
}
NAMES = ["base", "config/run folder", "models", "data", "training", "inference/evaluation/recipes/toy/engine",
         "commands/cli/server/jobs"]


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``module -> the sdtune modules it imports`` (a ``from pkg import name`` counts as ``pkg.name`` when that is a
    module, else as ``pkg``)."""
    files = {_module_name(p, src): p for p in sorted((src / "sdtune").rglob("*.py"))}
    modules = {name for name, _ in files}
    graph: dict[str, set[str]] = {}
    for (name, is_package), path in files.items():
        package = name if is_package else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                subs = [f"{origin}.{alias.name}" for alias in node.names if f"{origin}.{alias.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [origin, *subs]
            for target in targets:
                while target and target not in modules:  # `import sdtune.models.lora.x` -> the module it names
                    target = target.rpartition(".")[0]
                if target.startswith("sdtune") and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def layer_of(module: str) -> int | None:
    """The layer of the longest prefix of ``module`` in LAYERS (``sdtune`` itself: only its ``__init__``)."""
    parts = module.split(".")
    for i in range(len(parts), 1, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    return LAYERS["sdtune"] if module == "sdtune" else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{module} ({NAMES[here]}) imports {target} ({NAMES[there]})")
    return bad


def test_every_module_has_a_layer():
    missing = sorted(m for m in import_graph() if layer_of(m) is None)
    assert not missing, f"give these modules a layer in tests/unit/test_layers.py LAYERS: {missing}"


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles in src/sdtune:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layers_point_one_way():
    bad = upward_imports(import_graph())
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_models_never_import_inference():
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("sdtune.models")
                 for t in ts if t.startswith("sdtune.inference"))
    assert not bad, bad


def test_the_checks_see_what_they_check(tmp_path):
    """A function-level import closing a circle and an upward import are both found (the test can fail)."""
    pkg = tmp_path / "sdtune"
    (pkg / "models").mkdir(parents=True)
    (pkg / "inference").mkdir()
    for init in (pkg, pkg / "models", pkg / "inference"):
        (init / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "models" / "fit.py").write_text("def f():\n    from sdtune.inference.pipeline import read_run\n",
                                           encoding="utf-8")
    (pkg / "inference" / "pipeline.py").write_text("from ..models import fit\n", encoding="utf-8")
    graph = import_graph(tmp_path)
    assert graph["sdtune.inference.pipeline"] == {"sdtune.models.fit"}
    assert cycles(graph) == [["sdtune.inference.pipeline", "sdtune.models.fit"]]
    assert upward_imports(graph) == ["sdtune.models.fit (models) imports sdtune.inference.pipeline "
                                     "(inference/evaluation/recipes/toy/engine)"]
    assert layer_of("sdtune.brand_new") is None  # a new module must be given a layer


@pytest.mark.parametrize("module", ["sdtune.run_folder", "sdtune.config"])
def test_run_folder_and_config_are_low(module):
    """The run folder's one reader sits below models, so models, data and training can read runs."""
    assert layer_of(module) < LAYERS["sdtune.models"]
