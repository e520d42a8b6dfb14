"""The layout shows what ships: the top level of `src/hier_ae/` is exactly the remote-code closure.

The closure is computed from the imports of the three entry files (configuration, modeling,
tokenization), following `from .module import name` transitively, as transformers does when it
copies a model's code next to its weights.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, SUBPROCESS_ENV, tiny_config

from hier_ae import HierAEByteTokenizer, HierAEForCausalLM

PKG = REPO / "src" / "hier_ae"
ENTRY = ("configuration_hier_ae", "modeling_hier_ae", "tokenization_hier_ae")


def relative_imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every relative import in a file, function-level ones included.

    `from .level import HierLevel` -> (1, "level"); `from ..data import batching` -> (2, "data").
    """
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append((node.level, node.module or ""))
    return out


def closure() -> set[str]:
    """Top-level modules reachable from the entry files by relative imports."""
    seen, todo = set(), list(ENTRY)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for level, module in relative_imports(PKG / f"{name}.py"):
            assert level == 1 and "." not in module, (
                f"{name}.py imports {'.' * level}{module}: outside the top level"
            )
            todo.append(module)
    return seen


def test_top_level_is_exactly_the_remote_code_closure():
    top = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    shipped = closure()
    assert shipped == top, (
        f"shipped, not top level: {sorted(shipped - top)}; the reverse: {sorted(top - shipped)}"
    )
    # no subpackage is needed by the model: nothing shipped imports one
    for name in top:
        for _, module in relative_imports(PKG / f"{name}.py"):
            assert (PKG / f"{module}.py").exists(), f"{name}.py imports .{module}, not a top-level module"


def test_save_pretrained_writes_exactly_the_closure(tmp_path):
    torch.manual_seed(0)
    HierAEForCausalLM(tiny_config(1)).save_pretrained(tmp_path)
    HierAEByteTokenizer().save_pretrained(tmp_path)
    written = {p.stem for p in tmp_path.glob("*.py")}
    assert written == closure()


def test_readme_layout_lists_every_file_and_folder():
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Layout") :]
    table = table[: table.index("\n## ", 1)]
    named = set(re.findall(r"`([^`]+)`", table))
    named |= {part.strip("`: ") for cell in named for part in re.split(r"[,\s]+", cell)}
    for path in sorted(PKG.rglob("*")):
        if "__pycache__" in path.parts or path.suffix not in (".py", ".md", "") or path.name.startswith("."):
            continue
        rel = path.relative_to(PKG)
        if path.is_dir():
            assert f"{rel.as_posix()}/" in named, f"README layout table does not list the folder {rel}/"
        elif len(rel.parts) == 1:
            assert rel.name in named, f"README layout table does not list {rel}"
        else:
            assert f"{rel.parts[0]}/" in named and rel.name in named, (
                f"README layout table does not list {rel}"
            )


def test_model_card_template_ships_as_package_data(tmp_path):
    """The wheel carries the template, so rendering a card works from an installed package."""
    import tomllib

    from hier_ae.publishing.model_card import TEMPLATE

    assert TEMPLATE.is_file() and TEMPLATE.parent == PKG / "publishing"
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["hier_ae"]
    assert any(TEMPLATE.relative_to(PKG).match(p) for p in patterns), patterns


@pytest.mark.slow  # end to end: builds the wheel and installs it into a folder (about 15 s)
def test_installed_wheel_renders_a_model_card(tmp_path):
    """Build the wheel, install it (no source checkout on the path), render a card and load a metric."""
    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    subprocess.run(build, check=True, cwd=tmp_path, capture_output=True, env=SUBPROCESS_ENV)
    (wheel,) = wheels.glob("hier_ae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hier_ae/publishing/model_card_template.md" in names
    assert {
        "hier_ae/metrics/reconstruction/reconstruction.py",
        "hier_ae/metrics/bits_per_byte/bits_per_byte.py",
    } <= set(names)
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True
    )
    folder = tmp_path / "model"
    script = f"""
import hier_ae, torch
from hier_ae.publishing.model_card import render_model_card
assert hier_ae.__file__.startswith({str(site)!r}), hier_ae.__file__
cfg = hier_ae.HierAEConfig(levels=[{{"codebook_size": 16}}])
render_model_card({str(folder)!r}, config=cfg, repo_id=None, training_data="t", stages=["s"],
                  train_seconds=1.0, hardware="cpu", metrics={{}})
from hier_ae import metrics
assert metrics.path("reconstruction").startswith({str(site)!r})
print(metrics.load("reconstruction").compute(predictions=[b"ab"], references=[b"ab"])["exact_match"])
"""
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trust_remote_code=True" in (folder / "README.md").read_text()
    assert proc.stdout.strip().endswith("1.0"), proc.stdout  # a metric loads from the installed wheel
