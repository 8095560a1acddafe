"""Evaluation: pure functions of feature tensors and label arrays.

`distance` (pairwise distances in blocks), `rerank` (k-reciprocal re-ranking in bounded memory),
`metrics` (CMC, mAP, mINP under every dataset protocol) and `score` (both, plain and re-ranked).
Nothing here reads files or knows a spec.
"""
