"""PC-CLIP's comparative prompting (Sam et al. 2024): class text embeddings moved by difference texts.

A PC-CLIP model puts f(a) - f(b) where the text "how a differs from b" points. So the embedding of
class i minus the embedding of "how i differs from c" estimates class c's embedding. Comparative
prompting mixes each class's own text embedding with the mean of such estimates from other
classes:

    t~_c = normalize(alpha * t_c + (1 - alpha) * mean_{(i, c)} (t_i - d_{i,c}))

with every t and d unit-normalised, as the authors' evaluation code computes it (alpha 0.8 there).
A class with no comparative keeps its own embedding. Pure: no Ray, no model.
"""

from __future__ import annotations


def comparative_class_embeddings(text, diffs, pairs: list[tuple[int, int]], alpha: float):
    """(K, D) class text embeddings, (M, D) difference-text embeddings and M (i, c) pairs, each
    d_m saying how class i differs from class c -> (K, D) unit-norm comparative class embeddings."""
    import torch
    import torch.nn.functional as F

    if len(pairs) != len(diffs):
        raise ValueError(f"comparative prompting: {len(pairs)} class pairs for {len(diffs)} difference texts")
    t = F.normalize(text, dim=-1)
    if not pairs:
        return t
    d = F.normalize(diffs, dim=-1)
    i = torch.tensor([p[0] for p in pairs], device=t.device)
    c = torch.tensor([p[1] for p in pairs], device=t.device)
    sums = torch.zeros_like(t).index_add_(0, c, t[i] - d)  # sum over (i, c) of t_i - d_{i,c}
    counts = torch.zeros(len(t), device=t.device, dtype=t.dtype).index_add_(0, c, torch.ones_like(c, dtype=t.dtype))
    means = sums / counts.clamp(min=1).unsqueeze(1)  # no comparative: 0, so t~_c = t_c after normalising
    return F.normalize(alpha * t + (1 - alpha) * means, dim=-1)  # Sam et al. 2024 (PC-CLIP), comparative prompting


def nearest_others(text, k: int) -> list[list[int]]:
    """For each class, the k other classes whose text embeddings are closest (cosine): the ones a
    zero-shot classifier is likeliest to confuse with it, chosen without looking at any image."""
    import torch.nn.functional as F

    t = F.normalize(text, dim=-1)
    sim = t @ t.T
    sim.fill_diagonal_(float("-inf"))
    k = min(k, len(t) - 1)
    return sim.topk(k, dim=1).indices.tolist() if k > 0 else [[] for _ in range(len(t))]
