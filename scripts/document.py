"""Regenerate the README's reference part from project.yml, so that it cannot drift from it: the
commands and workflows as `spacy project document` writes them (its title and description left out:
they open the README), then a table of every variable with its default and the comment above it in
project.yml. The part sits between `spacy project document`'s own markers. `--check` changes
nothing and fails when the README is out of date (the tests run it)."""

import contextlib
import io
import tempfile
from pathlib import Path
from typing import List, Tuple

import typer
from wasabi import MarkdownRenderer
from weasel.cli.document import MARKER_END, MARKER_START, project_document

from scripts.project_util import atomic_write_text

app = typer.Typer(add_completion=False)
START, END = MARKER_START.format(tag="WEASEL"), MARKER_END.format(tag="WEASEL")


def documented_vars(project_yml: Path) -> List[Tuple[str, str, str]]:
    """(name, default, description) of each variable, the description being the comment lines
    right above it in project.yml."""
    rows, comment, in_vars = [], [], False
    for line in project_yml.read_text(encoding="utf-8").splitlines():
        if not line.startswith(" "):
            in_vars = line.startswith("vars:")
            continue
        stripped = line.strip()
        if not in_vars or not stripped:
            comment = []
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
        elif line.startswith("  ") and not line.startswith("   "):
            name, default = (part.strip() for part in stripped.split(":", 1))
            rows.append((name, default.strip('"'), " ".join(comment)))
            comment = []
    return rows


def reference_part(project_dir: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp) / "README.md"
        with contextlib.redirect_stdout(io.StringIO()):  # weasel's "Saved project documentation"
            project_document(project_dir, generated, no_emoji=True)
        text = generated.read_text(encoding="utf-8")
    commands = text[text.index("## project.yml") : text.index(END)].rstrip()
    md = MarkdownRenderer(no_emoji=True)
    md.add(md.title(3, "Variables"))
    md.add("Set any of them on the command line: `spacy project run all . --vars.NAME VALUE`.")
    md.add(
        md.table(
            [
                (md.code(name), md.code(default) if default else '`""`', description)
                for name, default, description in documented_vars(project_dir / "project.yml")
            ],
            ["Variable", "Default", "Description"],
        )
    )
    return f"{START}\n\n{commands}\n\n{md.text}\n\n{END}"


def updated_readme(readme: str, project_dir: Path) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no `{START}` ... `{END}` markers")
    before, rest = readme.split(START, 1)
    return before + reference_part(project_dir) + rest.split(END, 1)[1]


@app.command()
def main(
    readme: Path = typer.Argument(Path("README.md"), exists=True, dir_okay=False, help="README with the markers"),
    project_dir: Path = typer.Option(
        Path("."), "--project-dir", exists=True, file_okay=False, help="Where project.yml is"
    ),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if the README is out of date"),
):
    current = readme.read_text(encoding="utf-8")
    try:
        updated = updated_readme(current, project_dir)
    except ValueError as err:
        typer.echo(f"Error: {readme}: {err}", err=True)
        raise typer.Exit(1)
    if check:
        if updated != current:
            typer.echo(
                f"{readme} is out of date with {project_dir / 'project.yml'}: run `spacy project run document .`",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(f"{readme} is up to date with project.yml")
    elif updated != current:
        atomic_write_text(readme, updated)
        typer.echo(f"Updated the generated part of {readme}")


if __name__ == "__main__":
    app()
