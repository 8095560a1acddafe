"""The published size of each dataset, as the readers return it, for `reidbench data check`.

Sources: the dataset papers (Market-1501, Zheng et al. 2015; DukeMTMC-reID, Zheng et al. 2017;
CUHK03, Li et al. 2014 with the 767/700 split of Zhong et al. 2017; CUHK01, Li et al. 2012; MSMT17,
Wei et al. 2018; Occluded-REID, Zhuo et al. 2018) and /work/shared/papers. Counts follow the
readers' conventions, noted where they differ from a file count.
"""

from __future__ import annotations

# Keys: train_ids, train_images, query_ids, query_images, gallery_ids, gallery_images, cameras.
PUBLISHED: dict[str, dict[str, int]] = {
    # bounding_box_test holds 19,732 files; the reader drops the 3,819 junk boxes (pid -1) and
    # keeps the distractors (pid 0, counted as one more identity beside the 750 test persons).
    "market1501": dict(train_ids=751, train_images=12936, query_ids=750, query_images=3368, gallery_ids=751,
                       gallery_images=15913, cameras=6),
    # The gallery adds 408 distractor persons to the 702 test persons.
    "dukemtmc": dict(train_ids=702, train_images=16522, query_ids=702, query_images=2228, gallery_ids=1110,
                     gallery_images=17661, cameras=8),
    "cuhk03-labeled": dict(train_ids=767, train_images=7368, query_ids=700, query_images=1400, gallery_ids=700,
                           gallery_images=5328, cameras=2),
    "cuhk03-detected": dict(train_ids=767, train_images=7365, query_ids=700, query_images=1400, gallery_ids=700,
                            gallery_images=5332, cameras=2),
    # Classic protocol: 100 test persons per split, all the other 1,367 of the 1,467 train.
    "cuhk03-labeled-classic": dict(train_ids=1367, query_ids=100, gallery_ids=100, cameras=2),
    "cuhk03-detected-classic": dict(train_ids=1367, query_ids=100, gallery_ids=100, cameras=2),
    # 971 persons x 4 images (3,884); 485 train, 486 test with 2 images per camera each.
    "cuhk01": dict(train_ids=485, train_images=1940, query_ids=486, query_images=972, gallery_ids=486, gallery_images=972,
                   cameras=2),
    # Train is list_train + list_val.
    "msmt17": dict(train_ids=1041, train_images=32621, query_ids=3060, query_images=11659, gallery_ids=3060,
                   gallery_images=82161, cameras=15),
    # 200 persons, 5 occluded (query) and 5 whole-body (gallery) images each; no train split.
    "occluded-reid": dict(train_ids=0, train_images=0, query_ids=200, query_images=1000, gallery_ids=200, gallery_images=1000,
                          cameras=2),
    "folder": {},
}
