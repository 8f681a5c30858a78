"""`pip install .` without extras, in a fresh virtual environment: the commands that serve and
generate start, and every module outside imagemini/bench (and the store's migration scripts, which
Alembic runs inside its own context) imports, so each runtime import is a
declared dependency (benchmarks need the `test` extra and are imported only when chosen; the
Ray Serve deployment, imagemini/api/ray_app.py, the `ray` extra: without it `serve --replicas`
says how to install it).
Slow (a minute or two): the package and its dependencies are installed for real, torch from the
pinned version as `./run` installs it. The repository is copied first, so the build writes nothing
into the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORT_ALL = """
import importlib, pkgutil, imagemini
for module in pkgutil.walk_packages(imagemini.__path__, "imagemini."):
    if not module.name.startswith(("imagemini.bench.", "imagemini.store.migrations", "imagemini.api.ray_app")):
        importlib.import_module(module.name)
"""


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_installs_without_extras_and_serves(tmp_path):
    source = tmp_path / "src"
    files = run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python, imagemini = venv / "bin" / "python", venv / "bin" / "imagemini"
    run(str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0")
    run(str(python), "-m", "pip", "install", "--quiet", str(source))
    for absent in ("httpx", "transformers", "pytest", "ray"):
        assert subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True).returncode != 0, absent
    assert "--port" in run(str(imagemini), "serve", "--help").stdout
    no_ray = subprocess.run([str(imagemini), "serve", "--replicas", "2", "--data-dir", str(tmp_path / "store")],
                            capture_output=True, text=True, timeout=120)
    assert no_ray.returncode != 0 and "pip install 'imagemini[ray]'" in no_ray.stderr
    assert "--out" in run(str(imagemini), "generate", "--help").stdout
    assert "http" in run(str(imagemini), "bench", "--help").stdout
    run(str(python), "-c", IMPORT_ALL, cwd=tmp_path)
    installed = run(str(python), "-c", "import imagemini.web, pathlib; print(pathlib.Path(imagemini.web.__file__).parent)",
                    cwd=tmp_path).stdout.strip()
    assert {"style.css", "playground.js"} <= {p.name for p in (Path(installed) / "static").iterdir()}
