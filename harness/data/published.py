"""The published size of each dataset, as the readers return it, for `reidbench data check`.

Sources: the dataset papers (Market-1501, Zheng et al. 2015; DukeMTMC-reID, Zheng et al. 2017;
CUHK03, Li et al. 2014 with the 767/700 split of Zhong et al. 2017; CUHK01, Li et al. 2012; MSMT17,
Wei et al. 2018; Occluded-REID, Zhuo et al. 2018) and /work/shared/papers. Counts follow the
readers' conventions, noted where they differ from a file count.

SPReID's training-only sets are read whole as a train split (no query, no gallery): VIPeR (Gray et
al. 2007: 632 persons, one image in each of 2 cameras), PRID 2011 single-shot (Hirzer et al. 2011,
the release's readme: 385 persons in camera A, 749 in B, 200 in both), CUHK02 (Li and Wang 2013:
971 + 306 + 107 + 193 + 239 = 1,816 persons in 5 camera pairs, 2 images per camera), 3DPeS (the
ReId snapshots: 193 persons, 1,012 images, as DGD, Xiao et al. 2016, Table 1 counts them),
Shinpuhkan2014 (Kawanishi et al. 2014: 24 persons, 16 cameras) and PSDB (CUHK-SYSU, Xiao et al.
2017: 5,532 training persons). Where no source gives a number (Shinpuhkan's and PSDB's image
counts, 3DPeS's cameras), it is left out rather than guessed.
"""

from __future__ import annotations

_NO_TEST = dict(query_ids=0, query_images=0, gallery_ids=0, gallery_images=0)

# Keys: train_ids, train_images, query_ids, query_images, gallery_ids, gallery_images, cameras.
PUBLISHED: dict[str, dict[str, int]] = {
    # bounding_box_test holds 19,732 files; the reader drops the 3,819 junk boxes (pid -1) and
    # keeps the distractors (pid 0, counted as one more identity beside the 750 test persons).
    "market1501": dict(
        train_ids=751,
        train_images=12936,
        query_ids=750,
        query_images=3368,
        gallery_ids=751,
        gallery_images=15913,
        cameras=6,
    ),
    # The gallery adds 408 distractor persons to the 702 test persons.
    "dukemtmc": dict(
        train_ids=702,
        train_images=16522,
        query_ids=702,
        query_images=2228,
        gallery_ids=1110,
        gallery_images=17661,
        cameras=8,
    ),
    "cuhk03-labeled": dict(
        train_ids=767,
        train_images=7368,
        query_ids=700,
        query_images=1400,
        gallery_ids=700,
        gallery_images=5328,
        cameras=2,
    ),
    "cuhk03-detected": dict(
        train_ids=767,
        train_images=7365,
        query_ids=700,
        query_images=1400,
        gallery_ids=700,
        gallery_images=5332,
        cameras=2,
    ),
    # Classic protocol: 100 test persons per split, all the other 1,367 of the 1,467 train.
    "cuhk03-labeled-classic": dict(train_ids=1367, query_ids=100, gallery_ids=100, cameras=2),
    "cuhk03-detected-classic": dict(train_ids=1367, query_ids=100, gallery_ids=100, cameras=2),
    # 971 persons x 4 images (3,884); 485 train, 486 test with 2 images per camera each.
    "cuhk01": dict(
        train_ids=485,
        train_images=1940,
        query_ids=486,
        query_images=972,
        gallery_ids=486,
        gallery_images=972,
        cameras=2,
    ),
    # Train is list_train + list_val.
    "msmt17": dict(
        train_ids=1041,
        train_images=32621,
        query_ids=3060,
        query_images=11659,
        gallery_ids=3060,
        gallery_images=82161,
        cameras=15,
    ),
    # 200 persons, 5 occluded (query) and 5 whole-body (gallery) images each; no train split.
    "occluded-reid": dict(
        train_ids=0, train_images=0, query_ids=200, query_images=1000, gallery_ids=200, gallery_images=1000, cameras=2
    ),
    "folder": {},
    "viper": dict(train_ids=632, train_images=1264, cameras=2, **_NO_TEST),
    # Camera A's 385 and camera B's 749 persons, 200 of them in both: 934 identities, 1,134 images.
    "prid": dict(train_ids=934, train_images=1134, cameras=2, **_NO_TEST),
    "cuhk02": dict(train_ids=1816, train_images=7264, cameras=10, **_NO_TEST),
    # DGD's count of the ReId snapshots; some papers count 192 persons and 1,011 images: data check's
    # "!" on a real copy tells which release it is.
    "3dpes": dict(train_ids=193, train_images=1012, **_NO_TEST),
    "shinpuhkan": dict(train_ids=24, cameras=16, **_NO_TEST),
    # Train.mat's persons; every one of their boxes is a crop (the box count is not published).
    "psdb": dict(train_ids=5532, cameras=1, **_NO_TEST),
}
