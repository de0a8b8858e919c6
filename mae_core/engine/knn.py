"""Weighted k-nearest-neighbour classification on encoder features (the online monitor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 256,
) -> float:
    """Top-1 accuracy (%) of a cosine-similarity kNN vote weighted by exp(sim / T).

    train_features (M, D), train_labels (M,), test_features (Q, D), test_labels (Q,).
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, test_features.shape[0], chunk):
        queries = F.normalize(test_features[start : start + chunk].float(), dim=1)
        sims, idx = (queries @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(queries.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_labels[start : start + chunk]).sum())
    return 100.0 * correct / max(1, test_features.shape[0])
