"""The transformer's windows run in groups of similar length, registered as
"conll.forward_by_length.v1": spacy-transformers pads every window of a batch to the longest, so a
batch of full windows and short tail windows is about half padding. Sorted by wordpiece length, the
windows run in groups padded to their own longest, and the outputs are put back in the original order
and shape. Bundled into the model package: it imports only installed libraries.
"""

from typing import Any, Callable, List, Tuple

import numpy
import torch
from spacy.util import registry
from spacy_transformers.data_classes import WordpieceBatch
from thinc.api import Model
from thinc.layers.pytorchwrapper import forward as pytorch_forward
from transformers.utils import ModelOutput

Forward = Callable[[Model, WordpieceBatch, bool], Tuple[Any, Callable]]


def groups_by_length(lengths: List[int], max_padded: int) -> List[numpy.ndarray]:
    """Row indices, longest rows first, cut into groups whose padded size fits in max_padded
    (a row longer than that is a group of its own)."""
    order = numpy.argsort(-numpy.asarray(lengths), kind="stable")
    groups, start = [], 0
    while start < len(order):
        rows = max(1, max_padded // max(1, lengths[order[start]]))
        groups.append(order[start : start + rows])
        start += rows
    return groups


def select_rows(wordpieces: WordpieceBatch, rows: numpy.ndarray) -> WordpieceBatch:
    width = max(wordpieces.lengths[i] for i in rows)
    return WordpieceBatch(
        strings=[wordpieces.strings[i] for i in rows],
        input_ids=wordpieces.input_ids[rows, :width],
        attention_mask=wordpieces.attention_mask[rows, :width],
        lengths=[wordpieces.lengths[i] for i in rows],
        token_type_ids=None if wordpieces.token_type_ids is None else wordpieces.token_type_ids[rows, :width],
    )


def scatter(pieces: List[Tuple[torch.Tensor, torch.Tensor]], n_rows: int, width: int) -> torch.Tensor:
    """One tensor of N_ROWS rows from (row index, tensor) pieces; the sequence axis of a
    (rows, wordpieces, hidden) tensor is zero-padded to WIDTH."""
    first = pieces[0][1]
    sequence = first.dim() == 3
    merged = first.new_zeros((n_rows, width, *first.shape[2:]) if sequence else (n_rows, *first.shape[1:]))
    for index, value in pieces:
        if sequence:
            merged[index, : value.shape[1]] = value
        else:
            merged[index] = value
    return merged


def groups_by_fill(lengths: List[int], fill: float) -> List[numpy.ndarray]:
    """Row indices, longest rows first, cut where a row is shorter than FILL times the longest
    row of its group."""
    order = numpy.argsort(-numpy.asarray(lengths), kind="stable")
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or lengths[order[i]] < fill * lengths[order[start]]:
            groups.append(order[start:i])
            start = i
    return groups


def merge_outputs(groups: List[Tuple[torch.Tensor, Any]], n_rows: int, width: int) -> Any:
    """One ModelOutput of N_ROWS rows, padded to WIDTH, from (row index, ModelOutput) groups."""
    merged = {}
    for key, value in groups[0][1].items():
        if isinstance(value, tuple):  # hidden_states: one tensor per layer
            merged[key] = tuple(
                scatter([(index, output[key][layer]) for index, output in groups], n_rows, width)
                for layer in range(len(value))
            )
        else:
            merged[key] = scatter([(index, output[key]) for index, output in groups], n_rows, width)
    return type(groups[0][1])(**merged)


def predict_only(_: Any) -> None:
    raise ValueError("conll.TransformerModel.v1: the grouped forward pass is for inference only")


def predict_by_length(
    model: Model, wordpieces: WordpieceBatch, precision: Any, max_padded: int, one_batch: bool
) -> ModelOutput:
    """The outputs for WORDPIECES, in eval mode without gradients, in groups of at most MAX_PADDED
    padded wordpieces (ONE_BATCH: all at once), on the weights PRECISION gives (one copy a batch)."""
    hf_model = model.shims[0]._model
    weights = precision.inference_weights(hf_model)
    hf_model.eval()
    try:
        with torch.no_grad():
            if one_batch:
                return precision.predict(model, wordpieces, weights)
            groups = []
            for rows in groups_by_length(wordpieces.lengths, max_padded):
                output = precision.predict(model, select_rows(wordpieces, rows), weights)
                groups.append((torch.as_tensor(rows, device=output["last_hidden_state"].device), output))
            return merge_outputs(groups, *wordpieces.input_ids.shape)
    finally:
        hf_model.train()


def train_by_length(
    model: Model, wordpieces: WordpieceBatch, precision: Any, train_fill: float
) -> Tuple[ModelOutput, Callable]:
    """The training forward pass on groups cut where a window is shorter than TRAIN_FILL times its
    group's longest; the gradient goes back to each group's own backward pass."""
    groups, backprops = [], []
    for rows in groups_by_fill(wordpieces.lengths, train_fill):
        output, backprop = precision.train_forward(model, select_rows(wordpieces, rows), True)
        groups.append((torch.as_tensor(rows, device=output["last_hidden_state"].device), output))
        backprops.append(backprop)
    with torch.no_grad():
        merged = merge_outputs(groups, *wordpieces.input_ids.shape)

    def backprop_groups(d_output: ModelOutput) -> List:
        for (index, output), backprop in zip(groups, backprops):
            group_width = output["last_hidden_state"].shape[1]
            d_group = ModelOutput()
            for key, gradient in d_output.items():
                d_group[key] = gradient[index, :group_width]
            backprop(d_group)
        return []

    return merged, backprop_groups


@registry.misc("conll.forward_by_length.v1")
def by_length(precision: Any, max_padded: int, train_fill: float) -> Forward:
    """The transformer's forward pass in groups of similar length.
    precision: the forward passes and inference weights (conll.cpu_precision.v1).
    max_padded: at inference, the most padded wordpieces a group; 0 for one batch.
    train_fill: in training, a new group starts at a window shorter than this times its group's
    longest; 0 for one batch."""

    def forward_by_length(model: Model, wordpieces: WordpieceBatch, is_train: bool) -> Tuple[Any, Callable]:
        if len(wordpieces) == 0:
            return pytorch_forward(model, wordpieces, is_train)
        # Attention maps have two sequence axes: with output_attentions, one padded batch.
        attentions = model.shims[0]._model.config.output_attentions
        if not is_train:
            return predict_by_length(
                model, wordpieces, precision, max_padded, attentions or max_padded <= 0
            ), predict_only
        # The gradient scaler unscales all gradients after each backward pass: with it, one batch.
        if attentions or train_fill <= 0 or model.shims[0]._grad_scaler._enabled:
            return precision.train_forward(model, wordpieces, is_train)
        return train_by_length(model, wordpieces, precision, train_fill)

    return forward_by_length
