"""The chunked linear + cross-entropy (lm/loss.py) against PyTorch's cross-entropy on full logits."""

import torch
import torch.nn.functional as F

from speechtok.lm.loss import causal_lm_loss, linear_cross_entropy


def plain(hidden, weight, targets):
    return F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)


def value_and_grads(fn, hidden, weight, targets):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets)
    (3.0 * loss).backward()  # a non-unit upstream gradient
    return loss.detach(), h.grad, w.grad


def test_chunked_loss_equals_cross_entropy_in_value_and_gradients():
    """fp32, 3 chunks (the last partial), ignored targets: the loss and both gradients are as close to a
    float64 reference as PyTorch's own fp32 cross-entropy is, within 4× its error + 1e-7 (float rounding)."""
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(50, 16, generator=g), torch.randn(300, 16, generator=g) * 0.5
    targets = torch.randint(0, 300, (50,), generator=g)
    targets[[3, 17, 40]] = -100
    ref = value_and_grads(plain, hidden.double(), weight.double(), targets)
    base = value_and_grads(plain, hidden, weight, targets)
    ours = value_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk=20), hidden, weight, targets)
    for r, b, o in zip(ref, base, ours):
        base_err = (b.double() - r).abs().max()
        assert (o.double() - r).abs().max() <= 4 * base_err + 1e-7, ((o.double() - r).abs().max(), base_err)
    assert ours[2][:, 0].abs().sum() > 0


def test_causal_lm_loss_equals_transformers_labels_loss():
    """On a tiny Llama: the loss from its last hidden states and head equals its own `labels=` loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    ids = torch.randint(0, 97, (2, 12))
    ref = model(input_ids=ids, labels=ids).loss
    hidden = model.model(input_ids=ids).last_hidden_state
    ours = causal_lm_loss(hidden, model.lm_head.weight, ids, chunk=7)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
