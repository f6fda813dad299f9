"""spacy-transformers' TransformerModel with an optional bfloat16 autocast on the CPU,
registered as "conll.TransformerModel.v1".

CPUs with AMX or AVX512-BF16 run bf16 matrix products several times faster than fp32.
`mixed_precision` only autocasts on CUDA, so with `cpu_bf16 = true` the transformer's forward
pass (and so its backward pass) runs under `torch.autocast("cpu", torch.bfloat16)` whenever
the weights are on the CPU; the weights and the optimizer stay fp32, and the outputs are cast
back to fp32 for the layers that follow. Switch it off at load time with
`spacy.load(name, config={"components": {"transformer": {"model": {"cpu_bf16": False}}}})`.

Bundled into the packaged model with `spacy package --code`: it imports only installed libraries.
"""
from typing import Any, Callable, List, Tuple

import torch
from spacy.tokens import Doc
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch
from thinc.api import Model
from thinc.layers.pytorchwrapper import forward as pytorch_forward


def cpu_bf16_forward(model: Model, wordpieces: Any, is_train: bool) -> Tuple[Any, Callable]:
    if model.shims[0]._model.device.type != "cpu":
        return pytorch_forward(model, wordpieces, is_train)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model_output, backprop = pytorch_forward(model, wordpieces, is_train)
    # In place: the backprop callback reads the same ModelOutput, so the gradient flows
    # through the fp32 cast into the bf16 graph.
    for key, value in model_output.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            model_output[key] = value.float()
    return model_output, backprop


@registry.architectures("conll.TransformerModel.v1")
def create_transformer_model(
    name: str,
    get_spans: Callable,
    tokenizer_config: dict = {},
    transformer_config: dict = {},
    mixed_precision: bool = False,
    grad_scaler_config: dict = {},
    cpu_bf16: bool = False,
) -> Model[List[Doc], FullTransformerBatch]:
    """spacy-transformers.TransformerModel.v3, plus `cpu_bf16`."""
    model = registry.architectures.get("spacy-transformers.TransformerModel.v3")(
        name,
        get_spans=get_spans,
        tokenizer_config=tokenizer_config,
        transformer_config=transformer_config,
        mixed_precision=mixed_precision,
        grad_scaler_config=grad_scaler_config,
    )
    if cpu_bf16:
        model.layers[0]._func = cpu_bf16_forward
    return model
