"""What a researcher looks at after a round besides the mean: the global model's confusion
matrix and the spread of client accuracies, as arrays TensorBoard shows.

Drawn with numpy alone (no matplotlib start-up on the training path): the confusion
matrix is a row-normalised heat map, one square block of pixels per cell.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.algorithms.training import eval_batches

#: client-accuracy metrics in a round's metrics (``eval/acc_client/<id>``)
CLIENT_ACC = "eval/acc_client/"


@torch.no_grad()
def evaluate_with_confusion(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    device: torch.device,
    batch_size: int = 512,
    precision: str = "fp32",
) -> tuple[float, float, np.ndarray]:
    """Accuracy, mean cross-entropy and the confusion matrix (rows: true class, columns:
    predicted) of ``model`` on ``(x, y)`` in one pass, eval mode."""
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    loss = 0.0
    for logits, yb in eval_batches(model, x, y, device, batch_size, precision):
        loss += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        pred = logits.argmax(1)
        confusion += torch.bincount(
            (yb * num_classes + pred).cpu(), minlength=num_classes * num_classes
        )
    matrix = confusion.view(num_classes, num_classes).numpy()
    n = max(1, len(y))
    return float(np.trace(matrix)) / n, loss / n, matrix


def confusion_image(matrix: np.ndarray, cell: int = 12) -> np.ndarray:
    """``HxWx3`` uint8 heat map of the row-normalised confusion matrix (dark = 0, yellow
    = the whole row), ``cell`` pixels per entry, a 1-pixel grid between entries."""
    rows = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    # a short perceptual ramp (dark blue -> teal -> yellow), interpolated per channel
    stops = np.array([[68, 1, 84], [33, 145, 140], [253, 231, 37]], dtype=np.float64)
    pos = frac * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    t = (pos - lo)[..., None]
    rgb = stops[lo] * (1 - t) + stops[lo + 1] * t
    big = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    big[::cell, :, :] = 255  # grid lines
    big[:, ::cell, :] = 255
    return big.astype(np.uint8)


def client_accuracies(metrics: dict[str, float]) -> np.ndarray:
    """The round's per-client accuracies (empty when the round had no evaluation)."""
    return np.array([v for k, v in metrics.items() if k.startswith(CLIENT_ACC)], dtype=float)
