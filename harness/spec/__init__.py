"""Grid specs: a TOML file parsed once into frozen dataclasses and expanded into cells.

`schema` holds the dataclasses (a cell, its recipe, resources, combinations), `parse` reads and
checks a file (`load_spec`), `values` coerces TOML values and finds the line of a key for errors.
"""

from harness.spec.parse import load_spec, parse_combinations
from harness.spec.schema import (
    ID_VERSION,
    NORMALIZE,
    PHASE_CLASSIFIERS,
    PHASE_DATASETS,
    PRECISIONS,
    SCHEDULES,
    Cell,
    Combination,
    DatasetConfig,
    Phase,
    RayConfig,
    Resources,
    SlurmConfig,
    Spec,
    SyntheticConfig,
    TrainConfig,
    model_kwargs,
    part_name,
    split_method,
)

__all__ = [
    "ID_VERSION",
    "NORMALIZE",
    "PHASE_CLASSIFIERS",
    "PHASE_DATASETS",
    "PRECISIONS",
    "SCHEDULES",
    "Cell",
    "Combination",
    "DatasetConfig",
    "Phase",
    "RayConfig",
    "Resources",
    "SlurmConfig",
    "Spec",
    "SyntheticConfig",
    "TrainConfig",
    "load_spec",
    "model_kwargs",
    "parse_combinations",
    "part_name",
    "split_method",
]
