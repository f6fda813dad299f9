"""The README's commands, workflows and variables are generated from project.yml and kept in sync."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT, run_checked

from scripts.document import documented_vars

ROOT_ON_PATH = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_document(project_dir, *args):
    """scripts/document.py run in PROJECT_DIR, which may be a copy without the scripts."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.document", "README.md", *args],
        cwd=project_dir,
        env=ROOT_ON_PATH,
        capture_output=True,
        text=True,
    )


def test_readme_is_up_to_date_with_project_yml():
    result = run_document(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def test_every_variable_is_documented():
    rows = documented_vars(ROOT / "project.yml")
    assert [name for name, _, description in rows if not description] == []
    readme = (ROOT / "README.md").read_text()
    for name, default, _ in rows:
        assert f"| `{name}` |" in readme, name


def test_a_change_to_project_yml_is_caught_then_regenerated(tmp_path):
    for name in ("project.yml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    project_yml = (tmp_path / "project.yml").read_text()
    (tmp_path / "project.yml").write_text(
        project_yml.replace("vars:\n", 'vars:\n  # Colour of the bikeshed.\n  bikeshed: "green"\n', 1).replace(
            'help: "Fine-tune the transformer', 'help: "Fine-tune, slowly, the transformer', 1
        )
    )
    before = (tmp_path / "README.md").read_text()
    result = run_document(tmp_path, "--check")
    assert result.returncode == 1 and "out of date" in result.stderr
    assert (tmp_path / "README.md").read_text() == before  # --check writes nothing
    run_checked([sys.executable, "-m", "scripts.document", "README.md"], cwd=tmp_path, env=ROOT_ON_PATH)
    after = (tmp_path / "README.md").read_text()
    assert "| `bikeshed` | `green` | Colour of the bikeshed. |" in after
    assert "Fine-tune, slowly, the transformer" in after
    # Only the generated part changed: the hand-written text around it is kept.
    assert after.split("<!-- WEASEL")[0] == before.split("<!-- WEASEL")[0]
    assert run_document(tmp_path, "--check").returncode == 0
