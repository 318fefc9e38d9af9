"""CTC forced alignment: the best frame path through a fixed label sequence (Viterbi over the CTC
topology, blank between labels), batched over utterances in plain PyTorch so it runs on GPU as well."""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def ctc_viterbi(log_probs: torch.Tensor, frames: torch.Tensor, targets: torch.Tensor,
                target_lengths: torch.Tensor, blank: int) -> list[torch.Tensor | None]:
    """For each utterance b, the label index (0..L_b-1) of every frame t < frames[b], or -1 on a blank;
    None where the transcript cannot fit (too few frames). log_probs [B, T, V]; targets [B, L] (padded)."""
    B, T, _ = log_probs.shape
    L = targets.shape[1]
    S = 2 * L + 1
    dev = log_probs.device
    ext = torch.full((B, S), blank, dtype=torch.long, device=dev)
    ext[:, 1::2] = targets
    s_idx = torch.arange(S, device=dev)
    valid = s_idx[None, :] < (2 * target_lengths[:, None] + 1).to(dev)
    # a skip from s-2 to s is allowed onto a label that differs from the label two states back
    skip = torch.zeros(B, S, dtype=torch.bool, device=dev)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])

    def emit(t: int) -> torch.Tensor:  # [B, S] log-probabilities of each state's symbol at frame t
        return log_probs[:, t].float().gather(1, ext).masked_fill(~valid, NEG_INF)

    alpha = torch.full((B, S), NEG_INF, device=dev)
    alpha[:, :2] = emit(0)[:, :2]
    # where each state came from: 0 stay, 1 from s-1, 2 from s-2 (T·B·S bytes: the memory bound)
    back = torch.zeros(T, B, S, dtype=torch.uint8, device=dev)
    frames = frames.to(dev)
    for t in range(1, T):
        one = torch.cat([alpha.new_full((B, 1), NEG_INF), alpha[:, :-1]], 1)
        two = torch.cat([alpha.new_full((B, 2), NEG_INF), alpha[:, :-2]], 1).masked_fill(~skip, NEG_INF)
        best, arg = torch.stack([alpha, one, two]).max(0)
        live = (t < frames)[:, None]  # padded frames keep alpha and point "stay": backtracking passes through
        alpha = torch.where(live, best + emit(t), alpha)
        back[t] = torch.where(live, arg, torch.zeros_like(arg)).to(torch.uint8)
    ends = 2 * target_lengths.to(dev)  # final blank; the last label is one before it
    last = alpha.gather(1, torch.stack([ends, (ends - 1).clamp(min=0)], 1))
    state = torch.where(last[:, 1] > last[:, 0], ends - 1, ends)
    score = last.max(1).values
    back, state = back.cpu(), state.cpu()
    path = torch.empty(T, B, dtype=torch.long)
    for t in range(T - 1, -1, -1):
        path[t] = state
        state = state - back[t].gather(1, state[:, None])[:, 0].long()
    out: list[torch.Tensor | None] = []
    for b in range(B):
        if not torch.isfinite(score[b]):
            out.append(None)
            continue
        s = path[: int(frames[b]), b]
        out.append(torch.where(s % 2 == 1, (s - 1) // 2, torch.full_like(s, -1)))
    return out


def label_spans(labels: torch.Tensor, num_labels: int) -> list[tuple[int, int]]:
    """[first frame, last frame + 1) of each label 0..num_labels-1 on a frame path from `ctc_viterbi`."""
    t = torch.arange(len(labels))
    on = labels >= 0
    first = torch.full((num_labels,), len(labels), dtype=torch.long).scatter_reduce(
        0, labels[on], t[on], "amin")
    last = torch.full((num_labels,), -1, dtype=torch.long).scatter_reduce(0, labels[on], t[on], "amax")
    return [(int(a), int(b) + 1) for a, b in zip(first, last)]
