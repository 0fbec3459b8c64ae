"""The package's shape, held by tests: files small enough to read, imports in one direction, nothing written twice.

docs/architecture.md draws the module map these tests keep true.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "efficientvim"
MAX_LINES = 400
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(p): p for p in MODULES}


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path) -> set[str]:
    """The package's modules ``path`` imports anywhere (inside functions too; not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import name`: the submodule pkg.name where there is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in NAMES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in NAMES and t != this)
    return found


def test_no_file_under_src_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job: {long}"


def test_the_package_imports_in_one_direction_without_cycles():
    graph = {name: imports_of(path) for name, path in NAMES.items()}
    assert graph["efficientvim.export.onnx"] >= {"efficientvim.quantize"}  # the walk sees function-level imports
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_quantization_sits_below_the_exporters():
    assert not any(m.startswith("efficientvim.export") for m in imports_of(NAMES["efficientvim.quantize"]))


def test_the_command_line_parses_without_torch():
    """Every CLI module imports torch (and the package's torch modules) only inside the functions that run."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not any(n == "torch" or n.startswith("torch.") for n in names), path.name


def _runs(path: Path, size: int) -> dict[tuple[str, ...], int]:
    lines = [(i, line.strip()) for i, line in enumerate(path.read_text().splitlines(), 1)]
    code = [(i, s) for i, s in lines if s and not s.startswith("#")]
    return {tuple(s for _, s in code[k : k + size]): code[k][0] for k in range(len(code) - size + 1)}


def test_no_six_line_run_of_code_is_written_twice_under_src():
    """Six or more identical lines (blank lines and comments aside) in two places: a piece of logic to share.
    Runs of imports, decorators and closing brackets alone are left out (they say nothing twice)."""
    seen: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for path in MODULES:
        for run, line in _runs(path, 6).items():
            if sum(len(s) > 3 and not s.startswith(("from ", "import ", "@", ")")) for s in run) >= 4:
                seen[run].append((str(path.relative_to(SRC)), line))
    pairs: dict[tuple[str, ...], list[str]] = defaultdict(list)  # overlapping runs of two files: one pair
    for places in seen.values():
        if len(places) > 1:
            pairs[tuple(sorted({f for f, _ in places}))].append(" ~ ".join(f"{f}:{n}" for f, n in places))
    assert len(pairs) <= 1, "written twice: " + "; ".join(runs[0] for runs in pairs.values())


@pytest.mark.skipif(shutil.which("duplicates") is None, reason="the workplace's `duplicates` tool is not installed")
def test_the_duplicates_tool_finds_at_most_one_pair_in_src():
    out = subprocess.run(["duplicates", "--repo", str(SRC)], capture_output=True, text=True, timeout=120).stdout
    first = out.splitlines()[0]
    pairs = 0 if first.startswith("no duplicates") else int(first.split()[0])
    assert pairs <= 1, out


# where a file may be written other than through efficientvim.writing, and why
DIRECT_WRITERS = {
    "writing.py": "the writer itself",
    "export/fixed_shape.py": "into the private folder of @written_whole",
    "export/executorch.py": "into the private folder of @written_whole",
    "export/coreml.py": "into the private folder of @written_whole",
    "export/torchscript.py": "into the private folder of @written_whole",
    "export/litert.py": "into the private folder of @written_whole",
    "hub.py": "into the private folder of staging()",
    "train/checkpoints.py": "the run lock, created exclusively; torch.save into replacing()",
    "bench/runners.py": "the benchmark's own temporary folder",
    "cli/__init__.py": "stdout to /dev/null after a broken pipe",
}


def test_files_are_written_through_the_one_writer():
    import re

    write = re.compile(r"\.write_(text|bytes)\(|\bopen\([^)]*[\"'][wax]b?\+?[\"']|\.savefig\(|\btorch\.save\(\w+,|"
                       r"\bos\.replace\(|os\.fdopen\([^)]*[\"'][wa]")
    writers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if write.search(p.read_text())}
    unexplained = sorted(writers - set(DIRECT_WRITERS))
    assert not unexplained, f"write through efficientvim.writing (or say why not in DIRECT_WRITERS): {unexplained}"
    assert "writing.py" in writers  # the pattern still finds writes
