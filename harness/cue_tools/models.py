"""The off-the-shelf models `reidbench cues make` runs: torchvision's COCO models, weights from the cache.

GASM made its cues with other models: "the semantic segmentation model PSPNet [26] trained with COCO
dataset" for the mask and "the human pose estimation model CenterNet [33]" for "13 human joints"
(its footnote: Head, Left-shoulder, Right-shoulder, Left-elbow, Right-elbow, Left-wrist, Right-wrist,
Left-hip, Right-hip, Left-knee, Right-knee, Left-ankle, Right-ankle). Neither ships with torchvision,
so reidbench uses the closest models that do, and a user with the papers' own outputs imports them
with `reidbench cues import` instead:

- mask: DeepLabV3-ResNet50 (``COCO_WITH_VOC_LABELS_V1``), semantic segmentation as PSPNet is (ASPP
  instead of PSPNet's pyramid pooling, trained on COCO's images with the 20 VOC classes, person
  among them): the mask is the softmax probability of ``person`` per pixel, at the model's
  520-pixel evaluation size and resized back to the image. Like PSPNet's mask it covers every
  person in the image, not only the one to identify.
- pose: Keypoint R-CNN-ResNet50-FPN (``COCO_V1``), a two-stage detector where CenterNet is a
  one-stage one, with COCO's 17 keypoints. The person kept is the detection that best fills the
  crop (largest score x IoU with the whole image: a re-ID image is a detector's box around its
  person); its 17 keypoints become GASM's 13 by `coco_to_gasm`. A keypoint's score is the sigmoid
  of torchvision's heatmap logit at the keypoint (CenterNet's is its heatmap peak, also in [0, 1]);
  no person detected: every score 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights, keypointrcnn_resnet50_fpn
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50

from harness.data.body_maps import NUM_KEYPOINTS
from methods.weights import WeightsFile

COCO_FACE = (0, 1, 2, 3, 4)  # nose, left eye, right eye, left ear, right ear
COCO_BODY = tuple(range(5, 17))  # left/right shoulder, elbow, wrist, hip, knee, ankle: GASM's order after the head
VOC_PERSON = 15  # DeepLabV3's COCO_WITH_VOC_LABELS categories: '__background__', 'aeroplane', ..., 'person' = 15
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

Images = list[torch.Tensor]  # uint8 (3, H, W) images on the model's device


@dataclass(frozen=True)
class CueModel:
    """A cue maker: its cue, its weights file in the cache, how to build it and how it makes raw cues."""

    name: str
    cue: str
    weights: WeightsFile
    build: Callable[[Path | None, int, int], torch.nn.Module]  # (weights or None: random, size, proposals)
    run: Callable[[torch.nn.Module, Images, int], list[np.ndarray]]  # (model, images, size) -> raw cues
    default_size: int  # the model's evaluation size (shorter side, pixels)
    description: str


def coco_to_gasm(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """COCO's 17 keypoints (x, y) and scores -> GASM's 13 rows ``x y score``.

    The head is the score-weighted mean of the five face points (nose, eyes, ears), scored by the
    best of them: the nose alone is missing from behind, where the ears are seen. The other 12 are
    COCO's body points, already in GASM's order."""
    keypoints, scores = np.asarray(keypoints, np.float32), np.clip(np.asarray(scores, np.float32), 0, 1)
    out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    face, weight = keypoints[list(COCO_FACE)], scores[list(COCO_FACE)]
    if weight.sum() > 0:
        out[0, :2] = (face * weight[:, None]).sum(0) / weight.sum()
        out[0, 2] = weight.max()
    out[1:, :2] = keypoints[list(COCO_BODY)]
    out[1:, 2] = scores[list(COCO_BODY)]
    return out


def pick_person(boxes: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> int | None:
    """The detection that best fills an image of `size` (score x IoU with the whole frame), or None."""
    if len(boxes) == 0:
        return None
    frame = torch.tensor([[0.0, 0.0, size[1], size[0]]], device=boxes.device)
    fit = torchvision.ops.box_iou(boxes.float(), frame)[:, 0] * scores
    return int(fit.argmax())


def _build_pose(weights: Path | None, size: int, proposals: int) -> torch.nn.Module:
    model = keypointrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=2,
        num_keypoints=17,
        min_size=size,
        max_size=1333 * size // 800,  # torchvision's 800 / 1333 at the default size
        rpn_pre_nms_top_n_test=proposals,
        rpn_post_nms_top_n_test=proposals,
        box_detections_per_img=10,  # a crop holds a few persons; the kept one is among the best
    )
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def _run_pose(model: torch.nn.Module, images: Images, size: int) -> list[np.ndarray]:
    out = []
    for image, found in zip(images, model([im.float() / 255 for im in images])):
        person = found["labels"] == 1
        best = pick_person(found["boxes"][person], found["scores"][person], tuple(image.shape[-2:]))
        if best is None:
            out.append(np.zeros((NUM_KEYPOINTS, 3), np.float32))
            continue
        keypoints = found["keypoints"][person][best, :, :2].float().cpu().numpy()
        scores = torch.sigmoid(found["keypoints_scores"][person][best].float()).cpu().numpy()
        out.append(coco_to_gasm(keypoints, scores))
    return out


def _build_mask(weights: Path | None, size: int, proposals: int) -> torch.nn.Module:
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def person_probability(model: torch.nn.Module, images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) uint8 images of one size -> (B, H, W) probability of 'person': the images resized
    to shorter side `size` (torchvision's evaluation transform), ImageNet-normalised, segmented, and
    the softmax resized back to the image."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(
        images.float() / 255,
        size=(round(h * scale), round(w * scale)),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
    logits = model((x - mean) / std)["out"].float()
    person = logits.softmax(1)[:, VOC_PERSON : VOC_PERSON + 1]
    return F.interpolate(person, size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def _run_mask(model: torch.nn.Module, images: Images, size: int) -> list[np.ndarray]:
    probability = person_probability(model, torch.stack(images), size)  # make() groups images by size
    return list((probability * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy())


def _tv(weights) -> WeightsFile:
    return WeightsFile(weights.url, check_hash=True)


MODELS: dict[str, CueModel] = {
    m.name: m
    for m in (
        CueModel(
            "keypointrcnn",
            "pose",
            _tv(KeypointRCNN_ResNet50_FPN_Weights.COCO_V1),
            _build_pose,
            _run_pose,
            800,
            "torchvision Keypoint R-CNN ResNet50-FPN, COCO 17 keypoints -> GASM's 13 (pose cues)",
        ),
        CueModel(
            "deeplabv3-coco",
            "mask",
            _tv(DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
            _build_mask,
            _run_mask,
            520,
            "torchvision DeepLabV3 ResNet50, COCO with VOC labels, person probability (mask cues)",
        ),
    )
}
MODEL_FOR = {m.cue: m for m in MODELS.values()}  # the cue -> the model that makes it
