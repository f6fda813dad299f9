"""One AdamW step over all the transformer's parameters on the CPU, registered as
"conll.fused_finish_update.v1": thinc's PyTorchShim calls the optimizer once a parameter, with a
conversion to NumPy each time. This takes the same step (thinc's Adam: clipping by each parameter's
norm, bias-corrected moments kept in the thinc optimizer, decoupled weight decay) in torch's fused
Adam kernel. Any other optimizer setting, or a GPU, takes thinc's own loop. With use_averages it
also keeps the moving average of the transformer's weights where spaCy's evaluation and saving find it.
Bundled into the model package: it imports only installed libraries.
"""

from typing import Any, Callable

import numpy
import torch
from spacy.util import registry
from thinc.api import Optimizer, torch2xp, xp2torch
from torch.optim.adam import adam as torch_adam


def uses_fused_adam(optimizer: Optimizer) -> bool:
    """Whether fused_adam_update does what thinc's Optimizer would: Adam with decoupled weight
    decay, no RAdam (update_averages keeps the averages)."""
    return (
        optimizer.b1 > 0
        and optimizer.b2 > 0
        and not optimizer.use_radam
        and (optimizer.L2_is_weight_decay or optimizer.L2 == 0)
    )


def fused_adam_update(shim: Any, optimizer: Optimizer) -> None:
    """thinc's Optimizer.__call__ for every parameter of SHIM's model: the gradients clipped by
    their norms in one foreach pass, torch's fused Adam kernel, then the decoupled weight decay."""
    named = [(name, p) for name, p in shim._model.named_parameters() if p.grad is not None and p.numel() > 0]
    if not named:
        return
    by_count: dict = {}
    for name, p in named:
        key = (shim.id, name)
        optimizer.nr_update[key] += 1
        if key not in optimizer.mom1:
            optimizer.mom1[key] = numpy.zeros(p.numel(), dtype="float32")
            optimizer.mom2[key] = numpy.zeros(p.numel(), dtype="float32")
        by_count.setdefault(optimizer.nr_update[key], []).append((key, p))
    grads = [p.grad for _, p in named]
    # spaCy updates the transformer right after its forward pass, before the components that
    # listen to it backpropagate into it (so with the gradient of the batch before). Through
    # .data the writes, as thinc's NumPy writes, stay out of autograd's version checks.
    params = [p.data for _, p in named]
    b1, b2, learn_rate = optimizer.b1, optimizer.b2, optimizer.learn_rate
    with torch.no_grad():
        if optimizer.grad_clip:
            norms = torch.stack(torch._foreach_norm(grads))
            scales = torch.where(norms >= optimizer.grad_clip, optimizer.grad_clip / norms, torch.ones_like(norms))
            torch._foreach_mul_(grads, list(scales.unbind()))
        for count, keyed in by_count.items():
            group = [p.data for _, p in keyed]
            # thinc scales the step by sqrt(1 - b2^t) / (1 - b1^t) and adds eps to sqrt(mom2);
            # torch divides sqrt(mom2) by sqrt(1 - b2^t) before adding eps: the same step with
            # eps / sqrt(1 - b2^t). The moments stay in thinc's optimizer; torch works on views.
            torch_adam(
                group,
                [p.grad for _, p in keyed],
                [torch.from_numpy(optimizer.mom1[key]).view_as(p) for key, p in keyed],
                [torch.from_numpy(optimizer.mom2[key]).view_as(p) for key, p in keyed],
                [],
                [torch.tensor(float(count - 1)) for _ in group],
                fused=True,
                amsgrad=False,
                maximize=False,
                beta1=b1,
                beta2=b2,
                lr=learn_rate,
                weight_decay=0.0,
                eps=optimizer.eps / (1 - b2**count) ** 0.5,
            )
        if optimizer.L2:
            torch._foreach_mul_(params, 1 - learn_rate * optimizer.L2)
        torch._foreach_zero_(grads)


def update_averages(shim: Any, optimizer: Optimizer) -> None:
    """thinc's moving average (Ops.update_averages) of every weight in SHIM's state dict, kept in
    optimizer.averages under the keys PyTorchShim.use_params reads, so that spaCy's evaluation and
    model-best use the averaged transformer. thinc's Optimizer keys a shim's averages by (shim id,
    name), which use_params never finds: with use_averages alone only the NER's weights are averaged."""
    steps = max(optimizer.nr_update[(shim.id, name)] for name, _ in shim._model.named_parameters())
    decay = min((1.0 + steps) / (10.0 + steps), 0.9999)
    with torch.no_grad():
        for name, value in shim._model.state_dict().items():
            key = f"pytorch_{shim.id}_{name}"
            if key not in optimizer.averages:
                optimizer.averages[key] = torch2xp(value.detach().clone())
            elif value.is_floating_point():
                xp2torch(optimizer.averages[key]).lerp_(value, 1 - decay)


@registry.misc("conll.fused_finish_update.v1")
def fused_finish_update(shim: Any) -> Callable[[Optimizer], None]:
    """SHIM's finish_update (a PyTorchShim), with fused_adam_update where it applies."""

    def finish_update(optimizer: Optimizer) -> None:
        on_cpu = all(p.device.type == "cpu" for p in shim._model.parameters())
        if on_cpu and not shim._grad_scaler._enabled and uses_fused_adam(optimizer):
            fused_adam_update(shim, optimizer)
        else:
            type(shim).finish_update(shim, optimizer)
        if optimizer.averages is not None:
            update_averages(shim, optimizer)

    return finish_update
