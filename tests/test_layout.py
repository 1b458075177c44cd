"""The package's seams: imports in one direction, and data shipped inside the package."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "varestorer"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """``(target module, line, inside a function)`` for every import of a varestorer module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(fn))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                if target in modules and target != name:
                    yield target, node.lineno, id(node) in in_function
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, node.lineno, id(node) in in_function


def test_the_package_imports_in_one_direction_counting_imports_inside_functions():
    modules = _modules()
    graph = {m: {t for t, _, _ in _imports(m, p, modules)} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


#: The packages in import order: each imports only from those before it (README: Layout). Training
#: (``distill``) sits on top: it writes exports, validates through the pipeline and scores with the
#: evaluation, though in the user's data flow distillation comes before export.
LAYERS = (
    ("errors", "compat", "resources", "safe_yaml", "outputs", "presets", "methods", "checkpoints"),
    ("data",),
    ("degradations",),
    ("restorer",),
    ("tokenizer",),
    ("transformer",),
    ("export",),
    ("inference",),
    ("evaluation",),
    ("distill",),
    ("app",),
    ("cli", "__main__", ""),
)


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_each_package_imports_only_from_the_layers_below_it():
    modules = _modules()
    up = [
        f"{p.relative_to(PACKAGE.parent)}:{line} imports {t}"
        for m, p in modules.items()
        for t, line, _ in _imports(m, p, modules)
        if _layer(t) > _layer(m)
    ]
    assert not up, "imports against the data flow (move the code down, or up beside its user):\n" + "\n".join(up)


def test_imports_inside_functions_are_left_only_where_they_keep_the_command_fast():
    modules = _modules()
    lazy = [
        f"{p.relative_to(PACKAGE.parent)}:{line} imports {t}"
        for m, p in modules.items()
        if not m.startswith("varestorer.cli")
        for t, line, inside in _imports(m, p, modules)
        if inside
    ]
    assert not lazy, "move these to the module top (the graph has no cycle to break):\n" + "\n".join(lazy)


@pytest.mark.slow
def test_every_file_the_package_writes_goes_through_the_atomic_helpers_of_outputs():
    """A file is whole or absent (a kill, a full disk): written under a temporary name and renamed
    (``outputs.write_text``, ``save_image``, ``atomic_file``...). Bare writes are allowed only into
    the temporary path ``atomic_file`` yields, and to /proc."""
    import re

    bare = re.compile(r"\.write_(text|bytes)\(|\bopen\([^)]*['\"][wa]b?['\"]")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "outputs.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if bare.search(line) and "atomic_file(" not in line and "/proc/" not in line:
                found.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not found, "write through varestorer.outputs instead:\n" + "\n".join(found)


def test_an_installed_wheel_finds_its_recipes_degradation_presets_and_card_templates(tmp_path):
    """Package data (importlib.resources): no checkout, no <prefix>/share (a --user install had none)."""
    root = PACKAGE.parent
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("varestorer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.startswith("varestorer/shipped/")}
    assert {f"varestorer/shipped/recipes/{p.name}" for p in (root / "recipes").glob("*.yaml")} <= shipped
    assert {f"varestorer/shipped/degradations/{p.name}" for p in (root / "degradations").glob("*.yaml")} <= shipped
    assert "varestorer/shipped/model_cards/varestorer.md" in shipped
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # what pip install --target/--user puts on the path
    probe = (
        "from varestorer.resources import find_resource, resource_dir\n"
        "print(find_resource('recipes', 'ablation-no-kl'))\n"
        "print(find_resource('degradations', 'realesrgan-x4'))\n"
        "print(find_resource('model_cards', 'varestorer', '.md'))\n"
        "from varestorer.distill.recipe import load_recipe\n"
        "r = load_recipe('ablation-no-kl')\n"  # its base: is found beside it, in the installed package
        "assert (r.loss.kl, r.optim.lr, r.model.preset) == (0.0, 1e-6, 'infinity-2b'), r\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(line.startswith(str(target / "varestorer" / "shipped")) for line in run.stdout.split())
