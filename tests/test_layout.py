"""The import graph: training/ and evaluation/ share data only through modeling_e2llm, and the files that
ship in every saved model folder import nothing but torch, transformers, safetensors, tokenizers, the
standard library and each other (a Hub reader has nothing else of this project); no module of the project
imports itself back through others."""

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("configuration_e2llm", "modeling_e2llm", "processing_e2llm", "context_cache")
SHIPPED_MAY_IMPORT = {"torch", "transformers", "safetensors", "tokenizers"}
# Dotted module name -> file, for every module of the project's packages (a package as its own name: __init__).
PROJECT_MODULES = {(path.parent.name if path.stem == "__init__" else f"{path.parent.name}.{path.stem}"): path
                   for package in ("modeling_e2llm", "training", "evaluation") for path in (ROOT / package).glob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of what `path` imports; relative imports as '.name' (e.g. '.context_cache')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names |= {"." + (node.module or alias.name).split(".")[0] for alias in node.names}
            else:
                names.add(node.module.split(".")[0])
    return names


def project_imports(path: Path) -> set[str]:
    """The project modules `path` imports, as dotted names ('modeling_e2llm.context_cache'; `from modeling_e2llm
    import X` as 'modeling_e2llm'). A submodule's import of a sibling is no edge to its package's __init__."""
    package, names = path.parent.name, set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            base = (package + (f".{node.module}" if node.module else "")) if node.level else node.module
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}  # `from package import module`
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names & PROJECT_MODULES.keys()


def test_the_project_import_graph_has_no_cycle():
    graph = {module: project_imports(path) - {module} for module, path in PROJECT_MODULES.items()}
    assert graph["modeling_e2llm.modeling_e2llm"] >= {"modeling_e2llm.context_cache", "modeling_e2llm.processing_e2llm"}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        pytest.fail(f"Import cycle: {' -> '.join(error.args[1])}")


@pytest.mark.parametrize("package, forbidden", [("training", "evaluation"), ("evaluation", "training")])
def test_training_and_evaluation_never_import_each_other(package, forbidden):
    offenders = {path.name: forbidden for path in (ROOT / package).glob("*.py")
                 if forbidden in imported_modules(path)}
    assert not offenders, f"{package}/ imports {forbidden}/: {offenders}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_files_import_only_the_libraries_and_each_other(name):
    allowed = SHIPPED_MAY_IMPORT | set(sys.stdlib_module_names) | {"." + other for other in SHIPPED}
    extra = imported_modules(ROOT / "modeling_e2llm" / f"{name}.py") - allowed
    assert not extra, f"modeling_e2llm/{name}.py imports {sorted(extra)}"
