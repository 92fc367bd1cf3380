"""Per-hypothesis gradient norms for Expected Gradient Length: which parameters count, and
|| d loss(x, h) / d theta || for every hypothesis h of a clip.

One forward serves all of a clip's hypotheses (eval mode: no dropout, no SpecAugment):
the head's loss for the N hypotheses in one batched call, then one backward per
hypothesis through the shared graph (``retain_graph``). The scorer gives each clip its
own graph (a backward through a batch's graph costs every row). When no encoder
parameter counts, the encoder runs without a graph and the backward passes stop at the
head.

A hypothesis the head's loss cannot score gets gradient 0: CTC's ``zero_infinity``, and
the pruned RNN-T loss when the hypothesis puts ``prune_range`` or more labels on one frame
(the head logs a warning); a full-lattice backend (``torchaudio``) has no such limit.

torch.func was tried for the per-pair backward (``vmap(grad(...))`` and
``autograd.grad(is_grads_batched=True)``) and fails on this model with torch 2.14:
``ctc_loss`` has no batching rule and its fallback stacks ragged internals, the RNN-T
prediction network's in-place updates do not batch, and the pruned loss's custom
autograd functions hit ``aten::alias`` without a rule.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence

import torch
from torch import nn

# Named parameter subsets; anything else is read as comma-separated name prefixes.
PARAMETER_SUBSETS = ("all", "head", "last_encoder_layer")


def last_encoder_layer_prefixes(model: nn.Module) -> List[str]:
    """Name prefixes of the encoder's last recurrent layer (both directions) and of the
    lookahead convolution after it, if any."""
    rnn = getattr(model.encoder, "rnn", None)
    if rnn is None:
        raise ValueError(f"last_encoder_layer: the {type(model.encoder).__name__} has no recurrent "
                         "layers; give comma-separated name prefixes instead")
    last = len(rnn.forward_layers) - 1
    prefixes = [f"encoder.rnn.forward_layers.{last}."]
    if rnn.backward_layers is not None:
        prefixes.append(f"encoder.rnn.backward_layers.{last}.")
    if getattr(model.encoder, "row_conv", None) is not None:
        prefixes.append("encoder.row_conv.")
    return prefixes


def select_parameters(model: nn.Module, head: str, which: str = "all") -> Dict[str, nn.Parameter]:
    """The parameters whose gradient EGL measures: ``"all"`` (the encoder and ``head``),
    ``"head"``, ``"last_encoder_layer"``, or comma-separated name prefixes (e.g.
    ``"encoder.rnn.forward_layers.1.,heads.ctc."``). Other heads never count: ``head``'s
    loss does not reach them."""
    own = ("encoder.", f"heads.{head}.")
    if which == "all":
        prefixes = list(own)
    elif which == "head":
        prefixes = [f"heads.{head}."]
    elif which == "last_encoder_layer":
        prefixes = last_encoder_layer_prefixes(model)
    else:
        prefixes = [p.strip() for p in which.split(",") if p.strip()]
    chosen = {n: p for n, p in model.named_parameters()
              if n.startswith(own) and n.startswith(tuple(prefixes))}
    if not chosen:
        raise ValueError(f"no parameters of the encoder or head {head!r} match {which!r} "
                         f"(subsets: {PARAMETER_SUBSETS}, or comma-separated name prefixes)")
    return chosen


@contextmanager
def only_these_require_grad(model: nn.Module, params: Dict[str, nn.Parameter]) -> Iterator[None]:
    """Build graphs for ``params`` alone (less memory, backward passes stop early); restore after."""
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    keep = {id(p) for p in params.values()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(before[n])


def pad_targets(hyps: Sequence[Sequence[int]]):
    """Token lists -> (targets (P, U) zero padded, at least one column; target_lens (P,))."""
    lens = torch.tensor([len(h) for h in hyps], dtype=torch.long)
    targets = torch.zeros(len(hyps), max(1, int(lens.max()) if len(hyps) else 1), dtype=torch.long)
    for i, h in enumerate(hyps):
        targets[i, : len(h)] = torch.tensor(list(h), dtype=torch.long)
    return targets, lens


def hypothesis_gradient_norms(head: nn.Module, enc: torch.Tensor, enc_lens: torch.Tensor,
                              rows: Sequence[int], hyps: Sequence[Sequence[int]],
                              params: Sequence[nn.Parameter]) -> torch.Tensor:
    """|| d loss(x_row, h) / d params || for each pair (rows[i], hyps[i]) -> (P,) float64.

    enc: (B, T, D) encoder output, carrying a graph back to whichever of ``params`` lie
    in the encoder; enc_lens: (B,); rows: (P,) clip of each hypothesis; hyps: P token lists.
    Each utterance's loss depends on its own row only (eval mode), so one batched head
    call gives every pair's loss and one backward per pair gives its gradient.
    """
    index = torch.as_tensor(list(rows), dtype=torch.long)
    targets, target_lens = pad_targets(hyps)
    losses = head.loss(enc[index], enc_lens[index], targets, target_lens)  # (P,)
    norms = torch.zeros(len(hyps), dtype=torch.float64)
    for i in range(len(hyps)):
        if not losses[i].requires_grad:  # zeroed (no path): no gradient
            continue
        grads = torch.autograd.grad(losses[i], list(params), retain_graph=i < len(hyps) - 1,
                                    allow_unused=True)
        norms[i] = sum(float(g.double().pow(2).sum()) for g in grads if g is not None) ** 0.5
    return norms
