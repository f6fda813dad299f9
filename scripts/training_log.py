"""The training logger "conll.TrainingLogger.v1": spaCy's console table (with its progress bar to
the next dev evaluation) plus a JSONL log, one line per evaluation, with what the console table
drops: the time, the words trained on so far and every dev score, per type included.
With `checkpoints` set, it also keeps the pipeline of every evaluation as <checkpoints>/step-<N>,
so that a benchmark can score the model it had at any point of the dev curve.

"seconds" is the training time so far without the dev evaluations and the checkpoints, as the
reference Trainer's time is taken (benchmarks/reference_train.py leaves its scoring out);
"wall_seconds" is the whole wall time since the first step, and "scoring_seconds" the difference.

The progress bar only shows on a terminal (tqdm turns itself off otherwise), so CI logs keep
one table row per evaluation.
"""

import json
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Tuple

from spacy.language import Language
from spacy.util import registry

StepLogger = Callable[[Optional[Dict[str, Any]]], None]


def log_line(info: Dict[str, Any], wall_seconds: float, scoring_seconds: float) -> Dict[str, Any]:
    scores = {key: value for key, value in info["other_scores"].items() if isinstance(value, (int, float))}
    per_type = {key: value for key, value in info["other_scores"].items() if isinstance(value, dict)}
    return {
        "step": info["step"],
        "epoch": info["epoch"],
        "seconds": round(wall_seconds - scoring_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "scoring_seconds": round(scoring_seconds, 2),
        "words": info["words"],
        "losses": {name: float(loss) for name, loss in info["losses"].items()},
        "score": float(info["score"]),
        "scores": scores,
        "per_type": per_type,
    }


@registry.loggers("conll.TrainingLogger.v1")
def training_logger(log_path: Optional[str] = None, progress_bar: bool = True, checkpoints: Optional[str] = None):
    console_logger = registry.loggers.get("spacy.ConsoleLogger.v3")(
        progress_bar="eval" if progress_bar else None, console_output=True, output_file=None
    )

    def setup(nlp: Language, stdout: IO = sys.stdout, stderr: IO = sys.stderr) -> Tuple[StepLogger, Callable[[], None]]:
        log_console, finalize_console = console_logger(nlp, stdout, stderr)
        output = None
        if log_path:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            output = open(log_path, "w", encoding="utf-8")
        if checkpoints:
            Path(checkpoints).mkdir(parents=True, exist_ok=True)
        scoring = {"seconds": 0.0}
        evaluate = nlp.evaluate

        def timed_evaluate(*args: Any, **kwargs: Any) -> Dict[str, Any]:
            # spaCy's training loop scores dev through nlp.evaluate: its time is not training time.
            begin = time.perf_counter()
            scores = evaluate(*args, **kwargs)
            scoring["seconds"] += time.perf_counter() - begin
            return scores

        nlp.evaluate = timed_evaluate
        start = time.perf_counter()

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            log_console(info)
            if info is not None and checkpoints:
                begin = time.perf_counter()
                nlp.to_disk(Path(checkpoints) / f"step-{info['step']}")
                scoring["seconds"] += time.perf_counter() - begin
            if info is not None and output is not None:
                output.write(json.dumps(log_line(info, time.perf_counter() - start, scoring["seconds"])) + "\n")
                output.flush()

        def finalize() -> None:
            nlp.evaluate = evaluate
            finalize_console()
            if output is not None:
                output.close()

        return log_step, finalize

    return setup
