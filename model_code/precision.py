"""The transformer's forward passes in its precision, registered as "conll.cpu_precision.v1": with
`cpu_bf16` and the weights on the CPU, inference on a bf16 copy of the weights made once per batch
(no casts around every matrix product) and training under bf16 autocast, the outputs cast back to
fp32; otherwise fp32, or fp16 autocast on CUDA with mixed_precision. The stored weights and the
optimizer stay fp32. Bundled into the model package: it imports only installed libraries.
"""

from itertools import chain
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
from spacy.util import registry
from spacy_transformers.data_classes import WordpieceBatch
from thinc.api import Model
from thinc.layers.pytorchwrapper import forward as pytorch_forward
from transformers.utils import ModelOutput

Weights = Optional[Dict[str, torch.Tensor]]


class Precision(NamedTuple):
    """The transformer's weights for inference (None: its own), its inference on given rows, and its
    training forward pass."""

    inference_weights: Callable[[torch.nn.Module], Weights]
    predict: Callable[[Model, WordpieceBatch, Weights], ModelOutput]
    train_forward: Callable[[Model, WordpieceBatch, bool], Tuple[Any, Callable]]


def to_fp32(model_output: ModelOutput) -> ModelOutput:
    # In place: a training backprop callback reads the same ModelOutput, so the gradient flows
    # through the fp32 cast into the bf16 graph.
    for key, value in model_output.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            model_output[key] = value.float()
    return model_output


def cpu_bf16_forward(model: Model, wordpieces: WordpieceBatch, is_train: bool) -> Tuple[Any, Callable]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model_output, backprop = pytorch_forward(model, wordpieces, is_train)
    return to_fp32(model_output), backprop


def bf16_weights(hf_model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """HF_MODEL's floating-point parameters and buffers, cast to bf16."""
    named = chain(hf_model.named_parameters(), hf_model.named_buffers())
    return {name: tensor.to(torch.bfloat16) for name, tensor in named if tensor.is_floating_point()}


def predict_rows(model: Model, wordpieces: WordpieceBatch, weights: Optional[Dict[str, torch.Tensor]]) -> ModelOutput:
    """The transformer's outputs for WORDPIECES, as thinc's PyTorchShim.predict gives them, with the
    model already in eval mode and gradients off (once per batch of Docs, not once per group):
    on WEIGHTS, with the outputs in fp32, when given; else on its own parameters, fp16 autocast on
    CUDA with mixed_precision."""
    shim = model.shims[0]
    inputs, _ = model.attrs["convert_inputs"](model, wordpieces, False)
    if weights is None:
        with torch.autocast(device_type="cuda", enabled=shim._mixed_precision):
            output = shim._model(*inputs.args, **inputs.kwargs)
    else:
        output = to_fp32(torch.func.functional_call(shim._model, weights, inputs.args, inputs.kwargs, strict=False))
    output, _ = model.attrs["convert_outputs"](model, (wordpieces, output), False)
    return output


@registry.misc("conll.cpu_precision.v1")
def cpu_precision(cpu_bf16: bool) -> Precision:
    """The forward passes for a model with `cpu_bf16` (bool): bf16 whenever its weights are on the CPU."""

    def on_cpu_in_bf16(hf_model: torch.nn.Module) -> bool:
        return cpu_bf16 and hf_model.device.type == "cpu"

    def inference_weights(hf_model: torch.nn.Module) -> Weights:
        return bf16_weights(hf_model) if on_cpu_in_bf16(hf_model) else None

    def train_forward(model: Model, wordpieces: WordpieceBatch, is_train: bool) -> Tuple[Any, Callable]:
        forward = cpu_bf16_forward if on_cpu_in_bf16(model.shims[0]._model) else pytorch_forward
        return forward(model, wordpieces, is_train)

    return Precision(inference_weights, predict_rows, train_forward)
