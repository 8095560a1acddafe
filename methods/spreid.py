"""SPReID: human semantic parsing for person re-identification (Kalayeh et al., CVPR 2018).

The baseline ("Model-S/M/L", and the Inception-V3/ResNet rows of Table 3) "simply aggregates the
output activations of the convolutional backbone using global average pooling", trained with a
"multi-class classification (over different identities) objective with softmax cross-entropy";
"final representations before the classifier layer are used" at test time.

SPReID (3.3) adds a second aggregation head: the final activations are pooled by each of the 5
l1-normalised parsing maps ("a matrix multiplication between the output of re-identification
backbone and human semantic parsing where their corresponding spatial domain is flattened"), then
"element-wise max operation over representations of head, upper-body, lower-body and shoes and
concatenate the outcome with the foreground and previously described global representation":
3C wide with foreground (`wfg`), 2C without (`wofg`). Choices where the paper is silent:

- resolutions: "the re-identification backbone ... uses bilinear interpolation to initially scale
  down the input images and then scale up the final activations to match the ones in human
  semantic parsing branch". The model's input is the spec's input_size; the backbone sees it scaled
  by `reid_scale` (default 492/512; the specs set 1) and its activations are upsampled bilinearly to
  the parsing grid: `parsing_grid` (h, w) when given, else input / `parsing_stride` (16: the parsing
  network's output stride, 3.2). The cue's parsing maps are area-averaged onto that grid and
  l1-normalised again. Settled with the authors' code (github.com/emrahbasaran/SPReID @bdb5ddf):
  main.py runs the parser on the image resized to `--scales_tr` 512 x 512 (output stride 16: a
  32 x 32 grid, modelx.py's dilated InceptionV3) and the re-ID backbone on it resized to
  `--scales_reid` 512 x 170, and 778 x 255 when fine-tuning (README's commands); modelx.py
  ReIDClassifier resizes the activations to `segprob.shape[-2:]`. So jobs/spreid*.toml train at
  input_size 512 x 170 then 778 x 255 with reid_scale = 1 and parsing_grid = [32, 32]. (The old
  default, the paper's Model-L 492 x 164 inside 512 x 170, is round(170 * 492/512) = 163 wide, not
  164; it is kept only as the default of `reid_scale`.)
- grouping of LIP's 20 labels into the 5 regions: harness/data/body_maps.py. The authors' modelx.py
  groups fg = 1 - background; head = hat, hair, sunglasses, face; upper = upper clothes, dress,
  coat, scarf, jumpsuits, glove, arms; lower = pants, legs, skirt; shoes = shoes and socks;
  body_maps follows it.
- learning-rate decay: the paper's "decay the learning rate 10 times using exponential shift with the
  rate of 0.9" reads as lr * 0.9^k; the released main.py decays "poly in 10 steps",
  (1 - t/T)^0.9 at every tenth, 0.126 of the base lr in the last tenth against 0.387. The code is
  what reproduces Table 5's numbers (its README), so the specs use `schedule = "poly"`;
  `schedule = "exponential"` is the literal reading (harness/engine/schedule.py).
- augmentation: none. The paper states none; the code's datachef.ReID10D only resizes (cv2 linear)
  and subtracts the channel means, so the specs set flip = 0.
- batch: the paper's "mini-batch size is set to 15" (the code's default is 16: the text is followed).
  The code shuffles images uniformly (MultiprocessIterator(shuffle=True)); reidbench's P x K sampler
  with K = 1 draws 15 distinct identities, which the uniform sampler of `[train] sampler` (another
  branch, issue 15 item 3) replaces once it lands.
- gradient clipping 2.0 is the paper's ("weight decay and gradient clipping with 0.0005 and 2.0");
  the released main.py has it commented out (`# opt.add_hook(GradientClipping(2.0))`). The text
  is unambiguous, so the specs keep grad_clip = 2.0.
- fine-tuning: the paper says only "fine-tune each one for an additional 50K iteration" at lr
  0.001 ("0.01 and 0.001 for the first and second phases"). main.py re-initialises a target-sized
  classifier (`label_dim_ft`, e.g. 751) and trains it at lr 0.01 with the pretrained layers at 0.001
  (`--optimizer "lr:0.01--lr_pretrained:0.001"`). The specs' fine-tuning phases do the same:
  `classifier = "new"`, `classifier_lr = 0.01`, `lr = 0.001` (harness/engine/heads.py): a softmax
  over the target's identities alone, not over the union's 12,436.
- weight sharing (Table 5): `wfg` has two backbones, one for the global-average head and one for
  the parsing head (the "N" rows, which are Table 4's w/fg numbers); `wfg-shared` uses one for both.
- "combined" (Table 4) and "combined-ft" (Table 6) are no model of their own: "SPReID^w/fg and
  SPReID^w/o fg ... their combination (ℓ2-normalization+concatenation) results in further
  performance gains" (4.3) combines the two separately trained models at test time. They are the
  specs' `[[combine]]` tables over the `wfg` and `wofg` cells (jobs/spreid.toml) and the `wfg-ft` and
  `wofg-ft` cells (jobs/spreid-ft.toml), so the combined rows come from the very models of the w/fg
  and w/o fg rows. reidbench once trained both halves in one cell, where the global gradient clip
  coupled them; the authors' code (github.com/emrahbasaran/SPReID, main.py) trains one model per
  run and has no joint option, so none is kept.
- `-ft` variants (`model-l-ft`, `wfg-ft`, `wofg-ft`, `wfg-ft-shared`) are the same models as
  without -ft: fine-tuning at 748 × 246 on each target is a recipe matter (the spec's phases).
  `model-s`/`model-m`/`model-l` are one model too, trained at different input sizes.
- loss: softmax cross-entropy only, no triplet ("Unlike recent research works which commonly adopt,
  binary or triplet losses, we train our model using softmax cross-entropy"). The label smoothing
  is the spec's value (jobs/spreid*.toml set 0: the paper has none); the triplet margin is ignored.
- the output stride 32 ("2048 channels with the output stride of 32") is the spec's last_stride = 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from methods import Cues, register_method
from methods.backbones import Backbone, create_backbone
from methods.losses import identity_loss


def parsing_pool(activations: torch.Tensor, parsing: torch.Tensor, *, foreground: bool) -> torch.Tensor:
    """SPReID's semantic pooling of (B, C, h, w) activations by (B, 5, h, w) l1-normalised maps:
    [foreground, max(head, upper, lower, shoes)] (B, 2C), or the max alone (B, C)."""
    regions = torch.bmm(activations.flatten(2), parsing.flatten(2).transpose(1, 2).to(activations.dtype))  # (B, C, 5)
    parts = regions[:, :, 1:].amax(dim=2)
    return torch.cat([regions[:, :, 0], parts], dim=1) if foreground else parts


class _Classified(nn.Module):
    """A softmax classifier over the embedding, and a fresh one for a fine-tuning phase's identities
    (`classifier = "new"`, harness/engine/heads.py): as main.py's target-sized classifier, nn.Linear's
    own initialisation."""

    embedding_dim: int

    def new_classifier(self, num_classes: int) -> nn.Linear:
        return nn.Linear(self.embedding_dim, num_classes)


class GapBaseline(_Classified):
    """SPReID's baseline: global average pooling of the final activations, softmax classifier."""

    train_cues: tuple[str, ...] = ()
    test_cues: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, num_classes: int, *, label_smoothing: float):
        super().__init__()
        self.backbone, self.label_smoothing = backbone, label_smoothing
        self.embedding_dim = backbone.out_channels
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        features = self.backbone(images).mean(dim=(2, 3))
        return {"logits": self.classifier(features)} if self.training else features

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"id": identity_loss(outputs["logits"], pids, self.label_smoothing)}


class SPReID(_Classified):
    """Global average head plus semantic-parsing head, on one shared or two exclusive backbones."""

    train_cues = test_cues = ("parsing",)

    def __init__(
        self,
        make_backbone: Callable[[], Backbone],
        num_classes: int,
        *,
        foreground: bool,
        shared: bool,
        reid_scale: float,
        parsing_stride: int,
        label_smoothing: float,
        parsing_grid: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.backbone = make_backbone()
        self.parsing_backbone = None if shared else make_backbone()
        self.foreground, self.reid_scale, self.parsing_stride = foreground, reid_scale, parsing_stride
        self.parsing_grid = parsing_grid
        self.embedding_dim = (3 if foreground else 2) * self.backbone.out_channels
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        self.label_smoothing = label_smoothing

    def features(self, images: torch.Tensor, parsing: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        reid_input = images
        if self.reid_scale != 1:
            size = (max(1, round(h * self.reid_scale)), max(1, round(w * self.reid_scale)))
            reid_input = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        activations = self.backbone(reid_input)
        grid = self.parsing_grid or (max(1, round(h / self.parsing_stride)), max(1, round(w / self.parsing_stride)))
        part_activations = activations if self.parsing_backbone is None else self.parsing_backbone(reid_input)
        upsampled = F.interpolate(part_activations, size=grid, mode="bilinear", align_corners=False)
        maps = F.interpolate(parsing.float(), size=grid, mode="area")
        maps = maps / maps.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        pooled = parsing_pool(upsampled, maps, foreground=self.foreground)
        return torch.cat([activations.mean(dim=(2, 3)), pooled], dim=1)

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor]):
        features = self.features(images, cues["parsing"])
        return {"logits": self.classifier(features)} if self.training else features

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"id": identity_loss(outputs["logits"], pids, self.label_smoothing)}


VARIANTS = (
    "wfg",
    "wofg",
    "wfg-shared",
    "model-s",
    "model-m",
    "model-l",
    "model-l-ft",
    "wfg-ft",
    "wofg-ft",
    "wfg-ft-shared",
)


def _model_class(variant: str) -> type[nn.Module]:
    return GapBaseline if variant.startswith("model-") else SPReID


# revision 1: LIP's Socks are grouped with the shoes (harness/data/body_maps.py), as SPReID's own code does
# (modelx.py: shoes = y[18] + y[19] + y[8]); the parsing regions its cells were trained on changed.
@register_method(
    "spreid",
    variants={v: Cues(_model_class(v).train_cues, _model_class(v).test_cues) for v in VARIANTS},
    triplet=False,  # cross-entropy only
    revision=1,
    new_classifier=True,  # _Classified: fine-tuning phases may train a target-sized classifier
)
def build_spreid(
    *,
    variant: str,
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    last_stride: int = 1,
    label_smoothing: float = 0.0,
    triplet_margin: float = 0.3,
    reid_scale: float = 492 / 512,
    parsing_stride: int = 16,
    parsing_grid: tuple[int, int] | list[int] | None = None,
) -> nn.Module:
    """The GAP baseline (`model-*`) or SPReID (`wfg*`, `wofg*`); see the module docstring.

    `triplet_margin` is accepted and ignored (cross-entropy only); `reid_scale` places the backbone's
    input relative to the input, `parsing_grid` (h, w) fixes the parsing grid (SPReID's code: the
    parser's 32 x 32 at 512 x 512), else it is the input / `parsing_stride`.
    """

    def make_backbone() -> Backbone:
        return create_backbone(backbone, pretrained=pretrained, last_stride=last_stride)

    if _model_class(variant) is GapBaseline:
        return GapBaseline(make_backbone(), num_classes, label_smoothing=label_smoothing)
    base = variant.removesuffix("-shared").replace("-ft", "")

    return SPReID(
        make_backbone,
        num_classes,
        foreground=base == "wfg",
        shared=variant.endswith("-shared"),
        reid_scale=reid_scale,
        parsing_stride=parsing_stride,
        parsing_grid=tuple(parsing_grid) if parsing_grid else None,
        label_smoothing=label_smoothing,
    )
