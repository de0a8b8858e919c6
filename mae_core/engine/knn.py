"""Classification on frozen encoder features (the online monitor): a weighted kNN and a linear probe."""

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


def linear_probe_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    weight_decay: float = 1e-3,
    iterations: int = 200,
) -> float:
    """Top-1 accuracy (%) of a multinomial logistic regression fitted on frozen features.

    train_features (M, D), train_labels (M,), test_features (Q, D), test_labels (Q,).
    Features are standardised with the train split's statistics (the role of the paper's
    BatchNorm before the linear head), then full-batch L-BFGS minimises cross-entropy + an L2
    penalty: deterministic, and a fraction of a second for a few thousand samples.
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    x = train_features.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    q = (test_features.double() - mean) / std
    with torch.enable_grad():
        weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, train_labels) + weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    predictions = (q @ weight.detach() + bias.detach()).argmax(dim=1)
    return 100.0 * int((predictions == test_labels).sum()) / max(1, test_labels.shape[0])
