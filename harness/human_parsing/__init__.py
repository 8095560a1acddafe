"""SPReID's human parsing model on LIP: train it, score it as SPReID Table 1 does, write parsing cues.

`reidbench parsing train|eval|write-cues` (harness/cli/parsing.py) drive the functions of
harness/human_parsing/run.py; the model is methods/spreid_parsing.py, the LIP layout harness/data/lip.py,
the metrics harness/human_parsing/metrics.py.
"""
