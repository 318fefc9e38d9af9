"""Linear + cross-entropy in chunks of rows, without the full [tokens, vocab] fp32 logits.

The LM head and the loss are one autograd function: the forward pass computes a chunk's logits (in the
input's dtype, fp32 only for that chunk's softmax), its loss terms and, at once, its gradients with respect
to the hidden states and the head's weight; the backward pass only scales them. Peak extra memory is one
chunk's logits instead of all of them twice (logits and their gradient), which is what lets a large
vocabulary train at a large batch."""

from __future__ import annotations

import torch
from torch import nn


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                ignore_index: int) -> torch.Tensor:
        keep = targets != ignore_index
        count = keep.sum().clamp(min=1).float()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for a in range(0, hidden.shape[0], chunk):
            h, t, k = hidden[a: a + chunk], targets[a: a + chunk], keep[a: a + chunk]
            logits = (h @ weight.T).float()
            t = torch.where(k, t, 0)
            lse = torch.logsumexp(logits, -1)
            total += ((lse - logits.gather(1, t[:, None])[:, 0]) * k).sum()
            g = torch.softmax(logits, -1)
            g[torch.arange(len(t), device=t.device), t] -= 1
            g = (g * (k[:, None] / count)).to(hidden.dtype)
            grad_hidden[a: a + chunk] = g @ weight
            grad_weight += (g.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_out.to(grad_hidden.dtype), grad_out.to(grad_weight.dtype)
        return grad_hidden * scale[0], grad_weight * scale[1], None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 4096,
                         ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of `hidden` [N, D] @ `weight` [V, D]ᵀ against `targets` [N] (those equal to
    `ignore_index` left out), computed `chunk` rows at a time; equals `F.cross_entropy(hidden @ weight.T,
    targets)` in value and gradients to float rounding (tested)."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, ignore_index)


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, chunk: int = 4096,
                   ignore_index: int = -100) -> torch.Tensor:
    """Next-token loss of a causal LM from its last hidden states [B, T, D] and head weight: position t
    predicts token t + 1 (what Hugging Face computes with `labels=input_ids`)."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    return linear_cross_entropy(h, weight, input_ids[:, 1:].reshape(-1), chunk, ignore_index)


class HiddenStatesHead(nn.Module):
    """Stands in for a causal LM's head under the chunked loss: its output is the hidden states, its
    `weight` the head's own Parameter (same state-dict key, still tied where it was)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.weight = head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def use_chunked_loss(model, chunk: int = 4096) -> None:
    """Make a Hugging Face causal LM compute its `labels=` loss with `causal_lm_loss` inside its own forward
    (so DDP/FSDP wrappers and compilation see it): the head passes hidden states through, and the loss
    applies the head's weight chunk by chunk. Its `logits` output is then the hidden states."""
    head = HiddenStatesHead(model.get_output_embeddings())
    model.set_output_embeddings(head)

    def loss(logits, labels, vocab_size=None, ignore_index: int = -100, **kwargs):
        return causal_lm_loss(logits, head.weight, labels, chunk, ignore_index)

    model.loss_function = loss
