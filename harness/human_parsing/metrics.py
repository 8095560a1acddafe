"""Semantic-segmentation scores from a confusion matrix, as SPReID Table 1 reports them on LIP.

Rows are the true labels, columns the predicted ones. Overall accuracy is the fraction of pixels
labelled right; mean accuracy averages each label's recall (right / its pixels); mean IoU averages
each label's right / (its pixels + pixels predicted as it - right). As in LIP's own evaluation, a
label whose score is 0/0 (absent from the truth for accuracy; from truth and prediction for IoU)
is left out of the mean rather than counted as 0 or 1.
"""

from __future__ import annotations

import torch

METRICS = ("overall_acc", "mean_acc", "mean_iou")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_labels: int, ignore: int = 255) -> torch.Tensor:
    """(num_labels, num_labels) int64 counts of (true, predicted) over the pixels whose truth is not `ignore`."""
    keep = target != ignore
    pairs = target[keep].long() * num_labels + pred[keep].long()
    return torch.bincount(pairs, minlength=num_labels * num_labels).view(num_labels, num_labels).cpu()


def parsing_scores(confusion: torch.Tensor) -> dict[str, float]:
    """Overall accuracy, mean accuracy and mean IoU, in percent."""
    conf = confusion.double()
    right, truth, predicted = conf.diag(), conf.sum(1), conf.sum(0)
    recall = right / truth  # nan where a label never occurs
    iou = right / (truth + predicted - right)
    return {
        "overall_acc": float(100 * right.sum() / conf.sum()),
        "mean_acc": float(100 * recall.nanmean()),
        "mean_iou": float(100 * iou.nanmean()),
    }


def per_label_iou(confusion: torch.Tensor) -> list[float]:
    conf = confusion.double()
    right = conf.diag()
    return (100 * right / (conf.sum(1) + conf.sum(0) - right)).tolist()
