"""spacy-transformers' TransformerModel.v3 with four additions, registered as "conll.TransformerModel.v1":
bf16 on the CPU (precision.py), windows run in groups of similar length (length_groups.py), batches
from arrays (array_batches.py with wordpiece_encoding.py) and one fused AdamW step (fused_adam.py). Each file
registers its piece, looked up here when the model is built: `spacy package --code` loads each file
alone. Bundled into the model package: it imports only installed libraries.
"""

from typing import Callable, List

from spacy.tokens import Doc
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch
from thinc.api import Model


@registry.architectures("conll.TransformerModel.v1")
def create_transformer_model(
    name: str,
    get_spans: Callable,
    tokenizer_config: dict = {},
    transformer_config: dict = {},
    mixed_precision: bool = False,
    grad_scaler_config: dict = {},
    cpu_bf16: bool = False,
    predict_wordpieces: int = 4096,
    train_group_fill: float = 0.7,
    fused_adam: bool = True,
    array_alignment: bool = True,
) -> Model[List[Doc], FullTransformerBatch]:
    """spacy-transformers.TransformerModel.v3 (name, get_spans, tokenizer_config, transformer_config,
    mixed_precision, grad_scaler_config as there), plus:
    cpu_bf16: bf16 whenever the weights are on the CPU (on CPUs with AMX or AVX512-BF16).
    predict_wordpieces: at inference, the most padded wordpieces a forward pass; 0 for one batch.
    train_group_fill: in training, a new group at a window shorter than this times its group's
        longest; 0 for one padded batch.
    fused_adam: one optimizer pass over all the transformer's parameters on the CPU.
    array_alignment: the wordpieces, their alignment and the per-Doc split from arrays, not Token objects.
    """
    model = registry.architectures.get("spacy-transformers.TransformerModel.v3")(
        name,
        get_spans=get_spans,
        tokenizer_config=tokenizer_config,
        transformer_config=transformer_config,
        mixed_precision=mixed_precision,
        grad_scaler_config=grad_scaler_config,
    )
    if array_alignment:
        model._func = registry.misc.get("conll.array_forward.v1")(registry.misc.get("conll.tokenize.v1")())
    transformer = model.layers[0]
    precision = registry.misc.get("conll.cpu_precision.v1")(cpu_bf16)
    transformer._func = registry.misc.get("conll.forward_by_length.v1")(precision, predict_wordpieces, train_group_fill)
    if fused_adam:
        shim = transformer.shims[0]
        shim.finish_update = registry.misc.get("conll.fused_finish_update.v1")(shim)
    return model
