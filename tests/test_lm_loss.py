"""The chunked linear + cross-entropy (lm/loss.py) against PyTorch's cross-entropy on full logits."""

import torch
import torch.nn.functional as F

from speechtok.lm.loss import linear_cross_entropy


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


def test_chunked_loss_in_a_transformers_model_equals_its_own_loss(tmp_path):
    """`use_chunked_loss` on a tiny Llama (tied and untied head): its `labels=` loss and every parameter's
    gradient equal the unmodified model's (rtol 1e-5: fp32 rounding of a different summation order), and
    save_pretrained writes the same head, which loads back as a plain model."""
    import copy

    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from speechtok.lm.loss import use_chunked_loss

    for tied in (False, True):
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
        ref = LlamaForCausalLM(cfg)
        ours = copy.deepcopy(ref)
        use_chunked_loss(ours, chunk=7)
        ids = torch.randint(0, 97, (2, 12))
        losses = [m(input_ids=ids, labels=ids).loss for m in (ref, ours)]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for loss in losses:
            loss.backward()
        grads = [dict((n, p.grad) for n, p in m.named_parameters()) for m in (ref, ours)]
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)
        ours.save_pretrained(tmp_path / str(tied))
        back = AutoModelForCausalLM.from_pretrained(tmp_path / str(tied))
        assert torch.equal(back.lm_head.weight, ref.lm_head.weight)
        torch.testing.assert_close(back(input_ids=ids).logits, ref(input_ids=ids).logits)
