"""The shape of the code, checked from its source (no imports of the project, so fast):

* imports go one way, ``models <- ablations <- analysis`` (module-level and
  function-level alike); the entry points (``sweep.py``, ``python -m analysis``) sit on top;
* no module imports another module's private name (``from x import _y``, ``x._y``);
* no source module is much over 400 lines;
* ``ruff check`` (the pyflakes rules of pyproject.toml: undefined names, unused imports)
  is clean;
* importing a measurement module loads no plotting library (measurements compute
  numbers; their figures live in ``analysis.views``).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "ablations", "analysis")
# A package may import only the packages listed for it (itself included).
ALLOWED = {"models": {"models"}, "ablations": {"models", "ablations"},
           "analysis": {"models", "ablations", "analysis"}}
MAX_LINES = 420  # "about 400"


def sources(packages=PACKAGES) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """``(line, imported module, imported names)`` of every import statement in the file,
    wherever it is (module level, inside functions, under ``if TYPE_CHECKING``);
    relative imports resolved against the file's package."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                me = module_name(path)
                package = me if path.name == "__init__.py" else me.rpartition(".")[0]
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join([*base, mod] if mod else base)
            yield node.lineno, mod, [a.name for a in node.names]


def ours(module: str) -> bool:
    return module.split(".")[0] in (*PACKAGES, "sweep")


def test_imports_go_one_way():
    wrong = []
    for path in sources():
        pkg = module_name(path).split(".")[0]
        for line, mod, names in imports(path):
            top = mod.split(".")[0]
            if ours(mod) and top not in ALLOWED[pkg]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not wrong, "imports against models <- ablations <- analysis:\n" + "\n".join(wrong)


def test_no_private_names_across_modules():
    wrong = []
    for path in [*sources(), ROOT / "sweep.py"]:
        me = module_name(path) if path.name != "sweep.py" else "sweep"
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}  # local name -> our module it names
        for line, mod, names in imports(path):
            if not ours(mod) or mod == me:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {mod}.{n}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and ours(node.module):
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if ours(a.name):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} uses "
                             f"{aliases[node.value.id]}.{node.attr}")
    assert not wrong, "private names used across modules:\n" + "\n".join(wrong)


def test_no_module_much_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in [*sources(), ROOT / "sweep.py"]
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    r = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["lesion", "shattering", "landscape", "responses", "signal"])
def test_measurement_modules_load_no_plotting(name):
    code = (f"import sys, ablations.measurements.{name}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('matplotlib', 'seaborn', 'tueplots', 'analysis'))\n"
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"importing {name} loaded: {r.stdout.strip()}"


def test_the_checks_can_fail(tmp_path):
    """The AST walk sees a function-level import and a private name (a check that finds
    nothing on a file built to fail would be vacuous)."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from analysis.report import _private\n")
    found = list(imports(f))
    assert found == [(2, "analysis.report", ["_private"])]
