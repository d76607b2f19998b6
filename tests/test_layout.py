"""The import graph: training/ and evaluation/ share data only through modeling_e2llm, and the files that
ship in every saved model folder import nothing but torch, transformers, safetensors, tokenizers, the
standard library and each other (a Hub reader has nothing else of this project)."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("configuration_e2llm", "modeling_e2llm", "processing_e2llm", "context_cache")
SHIPPED_MAY_IMPORT = {"torch", "transformers", "safetensors", "tokenizers"}


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
