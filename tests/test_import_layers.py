"""The package's import rules, read from the source with `ast` (no module is imported):

- no module imports another module's private (`_`-prefixed) name or a private module;
- the server imports from the engine only its public API, never the parts behind LLMEngine.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mistral_nemo"
SERVER = SRC / "entrypoints" / "server"
# What LLMEngine composes; callers reach them only through LLMEngine / AsyncLLMEngine / EngineInfo.
ENGINE_INTERNALS = {
    "block_manager",
    "core",
    "dense_cache",
    "generate",
    "model_runner",
    "output_processor",
    "paged_cache",
    "sampler",
    "scheduler",
    "sequence",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _package(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])


def _imports(source: str, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import statement of a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
    return found


def private_imports(source: str, package: str) -> list[str]:
    problems = []
    for line, module, names in _imports(source, package):
        if any(_private(part) for part in module.split(".")):
            problems.append(f"line {line}: the private module {module}")
        problems += [f"line {line}: the private name {module}.{n}" for n in names if _private(n)]
    return problems


def test_no_module_imports_a_private_name() -> None:
    problems = [
        f"{path.relative_to(SRC.parent)} {problem}"
        for path in sorted(SRC.rglob("*.py"))
        for problem in private_imports(path.read_text(encoding="utf-8"), _package(path))
    ]
    assert not problems, "\n".join(problems)


def test_the_server_uses_only_the_public_engine_api() -> None:
    problems = []
    for path in sorted(SERVER.rglob("*.py")):
        for line, module, names in _imports(path.read_text(encoding="utf-8"), _package(path)):
            parts = module.split(".")
            if parts[:2] != ["mistral_nemo", "engine"]:
                continue
            used = parts[2:3] or names  # "from mistral_nemo.engine import core" names the module
            where = f"{path.relative_to(SRC.parent)}:{line}"
            problems += [f"{where} imports engine.{u}" for u in used if u in ENGINE_INTERNALS]
    assert not problems, "\n".join(problems)


def test_the_scan_finds_private_imports() -> None:
    source = (
        "from .sampler import _sample, sample_batch\n"
        "from ..tokenizer.tekken import _special\n"
        "import mistral_nemo._private.thing\n"
        "from x import __all__\n"
    )
    assert private_imports(source, "mistral_nemo.engine") == [
        "line 1: the private name mistral_nemo.engine.sampler._sample",
        "line 2: the private name mistral_nemo.tokenizer.tekken._special",
        "line 3: the private module mistral_nemo._private.thing",
    ]
