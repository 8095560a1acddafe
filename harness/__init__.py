"""reidbench: reproduce and compare person re-identification methods at cluster scale."""

__version__ = "0.1.0"
