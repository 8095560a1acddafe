"""reidbench's tests; a package so that `tests.helpers` imports the same way under every pytest import mode."""
