"""Layer responses (He et al. 2016, arXiv 1512.03385, Sec. 4.2 and Fig. 7): the standard
deviation of each 3x3 convolution's output after its batch norm, before the ReLU and the
addition (per channel, averaged over channels: below), on the trained network, in
network order and sorted by magnitude. He et al. find smaller responses in ResNets
than in their plain counterparts, and smaller the deeper the ResNet: the residual
functions are "generally closer to zero".

The taps (``response_taps``), in network order, per trial, at init and trained:

* ResNet, post-activation (He et al.'s network): the stem conv after its norm, then per
  block the outputs of ``bn1`` and ``bn2`` (``bn2``: before the branch scale and the
  addition). With ``norm="none"`` the norms are ``nn.Identity``: the conv output itself.
* ResNet, pre-activation: the bare stem conv, then per block the output of conv1's
  following norm (``bn2``) and conv2's output, which no norm follows: the branch just
  before the branch scale and the addition. (``bn1`` normalizes the previous sum, not a
  conv's output, and is not a response.)
* MLP: each hidden layer's Linear output after its norm, before the ReLU and the addition
  (post: ``norm(W h + b)``, or ``W h + b`` without a norm); pre-activation layers, which
  no norm follows: ``W h + b`` of the normalized, rectified input, the branch before the
  addition; a bare ``nn.Linear`` (a pre-activation net's projection): its output.

Projection shortcuts and the classifier are not responses (He et al.'s Fig. 7 shows the
3x3 layers). The headline std (column ``std_channel``) is per channel: each channel's
std over the images and positions (n-1, float32), averaged over the channels (an MLP's
features are its channels): the spread that BN normalises (~|gamma| after a BN in train
mode), not inflated by the differences between channels' means (BN's shifts). Also the
std over every element of a tap at once (images, channels, positions: ``std_tensor``),
the only std of files measured before the per-channel one existed (their column
``std``): the report's figure and table (``analysis.views.responses``) then show it
and say so. On the first ``IMAGES`` = 500 test images, in eval mode. Forward hooks
read the tensors of the network's own forward; a DenseBlock's response, not a module
output when it has no norm, is computed in its hook from its input with its own pieces
(``DenseBlock.response``: ``F.linear(h, weight, bias)``, ``norm``): the same operations
as its forward, tested equal. Each family names its taps (``Network.response_taps``). Each hook reduces its tensor at once: a post stem's in-place ReLU overwrites it.
"""
from __future__ import annotations

import pandas as pd

from ablations.measurements import Measurement, register

IMAGES = 500
CHANNEL, TENSOR = "std_channel", "std_tensor"
LEGACY = "std"  # files measured before the per-channel std: the whole-tensor one
COLUMNS = ["layer", "layer_index", CHANNEL, TENSOR]
OWN = (*COLUMNS, LEGACY)  # the measurement's own columns, old and new (``per_trial``)


def response_taps(model) -> list[tuple[str, object, object]]:
    """``(name, module to hook, response(module, inputs, output))`` in network order: the
    network's own ``response_taps()`` (models/interface.py); TypeError for a network
    that is not a ``models.interface.Network``."""
    from models.interface import check_network
    return check_network(model).response_taps()


def trace(model, x, reduce) -> list[tuple[str, object]]:
    """``[(tap name, reduce(response))]`` in the order the hooks fired during ``model(x)``
    (no grad). ``reduce`` runs inside the hook: keep a clone, not the tensor."""
    import torch
    fired: list = []

    def hook(name, fn):
        return lambda mod, inputs, out: fired.append((name, reduce(fn(mod, inputs, out))))
    handles = [m.register_forward_hook(hook(name, fn)) for name, m, fn in response_taps(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return fired


def stds(t) -> tuple[float, float]:
    """``(per-channel std averaged over channels, std of every element)`` of a response
    ``t`` (N, C, ...): channel c's std is over ``t[:, c]`` (images and positions), n-1."""
    import torch
    per_channel = t.transpose(0, 1).flatten(1).std(1).mean()
    return tuple(torch.stack([per_channel, t.std()]).tolist())


def measure(model, data, trial) -> pd.DataFrame:
    """Per-channel and whole-tensor std of every response tap on the first 500 test
    images."""
    order = {name: i for i, (name, _, _) in enumerate(response_taps(model))}
    fired = trace(model, data.test_x[:IMAGES], stds)
    return pd.DataFrame([(name, order[name], *s) for name, s in fired], columns=COLUMNS)


register(Measurement(
    name="responses", when=("init", "final"), cost="cheap", fn=measure, default=True,
    summary="std of each 3x3 conv's (or Linear's) output after its norm, before the "
            "ReLU and the addition, per channel and averaged over channels (He et al. "
            "2016 Fig. 7); the whole-tensor std is stored too",
))
