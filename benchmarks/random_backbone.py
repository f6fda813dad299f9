"""Build a transformer with random weights and the exact architecture and tokenizer of SOURCE (a
hub name or a directory with its config.json and tokenizer files), saved with save_pretrained to
OUTPUT_DIR. Its training and inference speed are those of the real backbone; its accuracy means
nothing. Used to measure `distilbert-base-cased` where its weights cannot be downloaded.
`--layers` and `--width` shrink it (same tokenizer, so the same wordpieces): with 2 layers of
width 32 its matrix work is about nil, which leaves the pipeline's CPU-side work to measure."""

from pathlib import Path

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    source: str = typer.Argument(..., help="Hub name or directory with config.json and the tokenizer files"),
    output_dir: Path = typer.Argument(..., help="Where the save_pretrained directory goes"),
    seed: int = typer.Option(0, help="Seed of the random weights"),
    layers: int = typer.Option(0, help="Transformer layers instead of SOURCE's (0: SOURCE's)"),
    width: int = typer.Option(
        0, help="Hidden width instead of SOURCE's, 4x in the feed-forward, heads of 16 (0: SOURCE's)"
    ),
):
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source)
    if layers:
        config.num_hidden_layers = layers  # n_layers for DistilBERT: transformers maps the standard names
    if width:
        config.hidden_size, config.num_attention_heads = width, max(1, width // 16)
        for feed_forward in ("intermediate_size", "hidden_dim"):
            if hasattr(config, feed_forward):
                setattr(config, feed_forward, 4 * width)
    AutoTokenizer.from_pretrained(source).save_pretrained(output_dir)
    model = AutoModel.from_config(config)
    model.save_pretrained(output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    typer.echo(f"Saved a random {config.model_type} ({n_params / 1e6:.1f}M parameters) to {output_dir}")


if __name__ == "__main__":
    app()
