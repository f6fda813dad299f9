"""Every command in project.yml lists, among its deps, each project file it runs or imports, so that
`spacy project run` reruns a step when code it depends on changes."""

import ast
import re
from pathlib import Path
from typing import Dict, Set

from conftest import ROOT
from weasel.util import load_project_config

PACKAGES = ("annotate", "benchmarks", "model_code", "scripts")


def imported_modules(path: Path) -> Set[str]:
    """The project modules (`scripts.project_util`) that the file imports, at any depth in the file."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            if isinstance(node, ast.ImportFrom) and node.module
            else []
        )
        modules |= {name for name in names if name.split(".")[0] in PACKAGES and module_file(name).is_file()}
    return modules


def module_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def files_run(module: str) -> Set[str]:
    """The module's file and the files of every project module it imports, directly or not."""
    seen: Set[str] = set()
    to_visit = [module]
    while to_visit:
        current = to_visit.pop()
        if current not in seen:
            seen.add(current)
            to_visit += imported_modules(module_file(current))
    return {module_file(name).relative_to(ROOT).as_posix() for name in seen}


def files_each_command_runs() -> Dict[str, Set[str]]:
    config = load_project_config(ROOT)
    needed = {}
    for command in config["commands"]:
        files: Set[str] = set()
        for line in command.get("script", []):
            for module in re.findall(rf"python -m ((?:{'|'.join(PACKAGES)})\.\w+)", line):
                files |= files_run(module)
            for code in re.findall(r"--code (\S+)", line):
                files |= set(code.split(","))
        needed[command["name"]] = files
    return needed


def test_files_run_follows_imports_through_packages():
    assert {
        "annotate/predict.py",
        "annotate/annotation.py",
        "scripts/project_util.py",
        "model_code/long_texts.py",
    } <= files_run("annotate.predict")


def test_every_command_lists_the_project_files_it_runs_in_its_deps():
    config = load_project_config(ROOT)
    deps = {command["name"]: set(command.get("deps", [])) for command in config["commands"]}
    missing = {
        name: sorted(files - deps[name]) for name, files in files_each_command_runs().items() if files - deps[name]
    }
    assert not missing, f"project.yml: files each command runs but does not list in its deps: {missing}"
