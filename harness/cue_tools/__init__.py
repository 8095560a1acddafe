"""`reidbench cues make|import`: the cue maps of harness/data/cues.py made by off-the-shelf models, or
converted from the outputs of the papers' own tools.

- `files`: where a cue is written (the one seam for named cue sources), which images still need one
  (resume), atomic writes and the progress line;
- `models`: torchvision's COCO Keypoint R-CNN and DeepLabV3 as cue makers, their weights files;
- `make`: batched inference over a dataset, writing pose or mask cues;
- `importers`: DensePose IUV, LIP parsing labels, saliency, COCO keypoints JSON and mask PNGs.
"""
