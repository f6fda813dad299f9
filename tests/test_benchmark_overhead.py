"""bench-overhead's script on the tiny test pipeline: both variants run, agree, and are reported."""
import json
import sys

from conftest import CODE, ROOT, run_checked


def test_overhead_benchmark_reports_both_variants(project, tmp_path):
    benchmarks_md = tmp_path / "BENCHMARKS.md"
    benchmarks_md.write_text("# B\n\n<!-- overhead:start -->\nold\n<!-- overhead:end -->\nkept\n")
    output = tmp_path / "overhead.json"
    run_checked([sys.executable, str(ROOT / "benchmarks/benchmark_overhead.py"), "training/model-release",
                 "corpus/test.spacy", "--output", str(output), "--code", CODE, "--repetitions", "1",
                 "--benchmarks-md", str(benchmarks_md)], cwd=project)
    result = json.loads(output.read_text())
    assert result["same_entities_and_confidences"] is True
    variants = ["spacy-transformers (Token objects)", "from arrays"]
    assert list(result["words_per_second"]) == variants and all(v > 0 for v in result["words_per_second"].values())
    assert list(result["components_seconds"]["from arrays"]) == ["tokenizer", "transformer", "ner", "entity_confidence"]
    assert result["words"] > 0 and result["repetitions"] == 1 and len(result["seconds"]["from arrays"]) == 1
    text = benchmarks_md.read_text()
    assert "old" not in text and text.endswith("kept\n") and "| from arrays |" in text and "**after ÷ before**" in text
