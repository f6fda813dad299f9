"""Calibrate the entity confidences on the dev split: fit an isotonic regression of "the entity is
right" (its span and label match a gold entity) on the NER's probability of it, store the map in the
pipeline's entity_confidence component, and save the calibrated pipeline. Test is never used."""

import json
from pathlib import Path

import numpy
import spacy
import typer
from sklearn.isotonic import IsotonicRegression
from spacy.training import Corpus

from scripts.confidence_metrics import annotate, calibration_summary, entity_outcomes
from scripts.project_util import atomic_write_text, import_code_paths, one_line_errors, use_device

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Pipeline with entity_confidence"),
    dev_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Dev DocBin the map is fitted on"),
    output_dir: Path = typer.Argument(..., help="Where to save the calibrated pipeline"),
    summary_path: Path = typer.Option(..., "--summary", help="JSON with the fit's dev figures, before and after"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files with registered functions"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
):
    import_code_paths(code_paths)
    with one_line_errors():
        use_device(gpu_id)
    nlp = spacy.load(model_dir)
    component = nlp.get_pipe("entity_confidence")
    component.set_calibration(None, None)  # the fit reads the NER's own probabilities
    outcomes = entity_outcomes(annotate(nlp, list(Corpus(dev_path)(nlp))))
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    isotonic.fit(outcomes["raw"], outcomes["right"].astype(float))
    component.set_calibration(isotonic.X_thresholds_.tolist(), isotonic.y_thresholds_.tolist())
    calibrated = [component.calibration(p) for p in outcomes["raw"]]
    summary = {
        "split": str(dev_path),
        "points": len(isotonic.X_thresholds_),
        "uncalibrated": calibration_summary(outcomes["raw"], outcomes["right"]),
        "calibrated": calibration_summary(numpy.array(calibrated), outcomes["right"]),
    }
    nlp.to_disk(output_dir)
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    before, after = summary["uncalibrated"], summary["calibrated"]
    typer.echo(
        f"Calibrated on {before['entities']} dev entities ({summary['points']} points): "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}"
    )


if __name__ == "__main__":
    app()
