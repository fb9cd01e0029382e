"""The source tree shadows no installed distribution, whatever the working directory.

`python -m pytest`, `python -c ...` and a REPL put the working directory first on sys.path. A
top-level folder of this repository with an `__init__.py` is then a regular package that wins over
an installed one of the same name: `kernels/` once hid Hugging Face's `kernels`, which transformers
imports from `transformers.activations`, and every test that built a model failed to import.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_in_root(code: str) -> subprocess.CompletedProcess:
    # -c puts the working directory (the repository root) first on sys.path, like a user's REPL.
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_transformers_and_slimrt_import_from_the_repo_root():
    r = _run_in_root("import transformers.activations, slimrt, slimrt.kernels, slimrt.kernels._common; "
                     "print(slimrt.kernels.__path__[0])")
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.strip()).resolve() == ROOT / "kernels"


def test_no_top_level_folder_is_a_regular_package():
    # A folder without __init__.py is at most a namespace portion, which never hides a real package.
    packages = sorted(p.name for p in ROOT.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "__init__.py").exists())
    assert packages == [], f"top-level folders that would shadow installed packages: {packages}"


def test_installed_distributions_win_over_top_level_folders():
    # Every top-level name of the repository that an installed distribution also provides must
    # resolve to the installed one from the repository root (kernels is the one known today).
    names = [p.name for p in ROOT.iterdir() if p.is_dir() and p.name.isidentifier()]
    code = (
        "import importlib.metadata as md, importlib.util as u, json\n"
        f"names = {names!r}\n"
        "installed = {n for n in names if n in md.packages_distributions()}\n"
        "print(json.dumps({n: u.find_spec(n).origin for n in sorted(installed)}))\n"
    )
    r = _run_in_root(code)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    origins = json.loads(r.stdout)
    inside = {n: o for n, o in origins.items() if o is None or Path(o).resolve().is_relative_to(ROOT)
              and ".venv" not in Path(o).parts}
    assert not inside, f"these names resolve into the source tree, not the installed package: {inside}"
