"""Build a transformer with random weights and the exact architecture and tokenizer of SOURCE (a
hub name or a directory with its config.json and tokenizer files), saved with save_pretrained to
OUTPUT_DIR. Its training and inference speed are those of the real backbone; its accuracy means
nothing. Used to measure `distilbert-base-cased` where its weights cannot be downloaded."""
from pathlib import Path

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    source: str = typer.Argument(..., help="Hub name or directory with config.json and the tokenizer files"),
    output_dir: Path = typer.Argument(..., help="Where the save_pretrained directory goes"),
    seed: int = typer.Option(0, help="Seed of the random weights"),
):
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source)
    AutoTokenizer.from_pretrained(source).save_pretrained(output_dir)
    model = AutoModel.from_config(config)
    model.save_pretrained(output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    typer.echo(f"Saved a random {config.model_type} ({n_params / 1e6:.1f}M parameters) to {output_dir}")


if __name__ == "__main__":
    app()
