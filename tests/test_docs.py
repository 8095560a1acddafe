"""The documentation against the code: docs/specs.md lists exactly the keys the spec parser accepts,
with the code's defaults, and every relative link in README.md and docs/ leads somewhere."""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import tomllib
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.spec import (
    DatasetConfig,
    Phase,
    RayConfig,
    Resources,
    SlurmConfig,
    SyntheticConfig,
    TrainConfig,
    load_spec,
)
from methods import method_builder, method_names

REPO = Path(__file__).resolve().parent.parent
SPECS_MD = REPO / "docs" / "specs.md"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

PLAIN_SECTIONS = ("The top level", "Including specs")
GRID = """
[grid]
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]
"""


# -- reading docs/specs.md ------------------------------------------------------------------------


def documented_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Each section whose heading names a spec table in backticks (or is one of PLAIN_SECTIONS),
    by its heading without the backticks -> the rows of the first Markdown table under it."""
    sections: dict[str, list[dict[str, str]]] = {}
    current, header = None, None
    for line in text.splitlines():
        heading = re.match(r"^#{2,4}\s+(.*?)\s*$", line)
        if heading:
            title = heading.group(1)
            current = title.replace("`", "") if "`" in title or title in PLAIN_SECTIONS else None
            header = None
            if current is not None:
                assert current not in sections, f"docs/specs.md documents {current} twice"
                sections[current] = []
            continue
        if current is None:
            continue
        if not line.startswith("|"):
            if header is not None:
                current = None  # the section's first table has ended
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            sections[current].append(dict(zip(header, cells)))
    return sections


def key_of(row: dict[str, str]) -> str:
    match = re.fullmatch(r"`([^`]+)`", row["key"])
    assert match, f"docs/specs.md: the key column must hold one `key`, not {row['key']!r}"
    return match.group(1)


def documented_keys(sections: dict, table: str) -> set[str]:
    assert table in sections, f"docs/specs.md has no section for {table}"
    return {key_of(row) for row in sections[table]}


# -- what the code accepts ------------------------------------------------------------------------


def valid_names(tmp_path: Path, text: str) -> set[str]:
    """The names a UserError lists for an unknown key planted in `text`; an empty set when the
    error says the table takes nothing."""
    path = tmp_path / "spec.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(UserError) as err:
        load_spec(path)
    message = str(err.value)
    assert "zzz_not_a_key" in message or "takes no options" in message, message
    if "takes no options" in message:
        return set()
    listed = re.search(r"Valid names: (.*)\.$", message)
    assert listed, message
    return set(listed.group(1).split(", "))


def field_names(cls: type, leave_out: tuple[str, ...] = ()) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.name not in leave_out}


DATACLASS_TABLES = {
    "[train]": (TrainConfig, ()),
    "[[train.phases]]": (Phase, ()),
    "[resources]": (Resources, ("env",)),  # the top-level [env] table fills it
    "[slurm]": (SlurmConfig, ()),
    "[ray]": (RayConfig, ()),
    "[synthetic]": (SyntheticConfig, ()),
    "[datasets.NAME]": (DatasetConfig, ("name",)),  # the table's own name
}


def parser_tables(tmp_path: Path) -> dict[str, set[str]]:
    """Tables whose keys are not dataclass fields: what the parser accepts, from its own error."""
    (tmp_path / "other.toml").write_text(GRID)
    found = {
        "The top level": valid_names(tmp_path, "zzz_not_a_key = 1\n" + GRID),
        "[grid]": valid_names(tmp_path, GRID + "zzz_not_a_key = 1\n"),
        "[[combine]]": valid_names(tmp_path, GRID + "[[combine]]\nzzz_not_a_key = 1\n"),
        "Including specs": valid_names(tmp_path, 'include = ["other.toml"]\nzzz_not_a_key = 1\n'),
        "[grid] of an including spec": valid_names(tmp_path, 'include = ["other.toml"]\n[grid]\nzzz_not_a_key = 1\n'),
    }
    for method in method_names():
        spec = GRID.replace('"baseline"', f'"{method}"') + f"[method_options.{method}]\nzzz_not_a_key = 1\n"
        found[f"[method_options.{method}]"] = valid_names(tmp_path, spec)
    return found


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sections() -> dict[str, list[dict[str, str]]]:
    return documented_tables(SPECS_MD.read_text())


def test_every_spec_table_documents_exactly_the_keys_the_code_accepts(sections, tmp_path):
    expected = {table: field_names(cls, leave_out) for table, (cls, leave_out) in DATACLASS_TABLES.items()}
    expected.update(parser_tables(tmp_path))
    problems = []
    for table, keys in sorted(expected.items()):
        documented = documented_keys(sections, table) if table in sections else None
        if documented is None:
            problems.append(f"{table}: no section in docs/specs.md (its keys: {', '.join(sorted(keys)) or 'none'})")
        elif documented != keys:
            missing, unknown = sorted(keys - documented), sorted(documented - keys)
            problems.append(f"{table}: undocumented {missing}, documented but not accepted {unknown}")
    grouping = {"[method_options.METHOD]"}  # a heading over the per-method tables, with no keys of its own
    for table in sorted(set(sections) - set(expected) - grouping):
        problems.append(f"{table}: documented in docs/specs.md, but the spec has no such table")
    assert not problems, "docs/specs.md has drifted from the spec parser:\n" + "\n".join(problems)


def toml_value(text: str):
    return tomllib.loads(f"v = {text}")["v"]


def as_toml(value):
    return [as_toml(v) for v in value] if isinstance(value, (tuple, list)) else value


def check_default(where: str, row: dict[str, str], default) -> str | None:
    """A default written as `value` must be the code's; one written "none..." must be None."""
    cell = row.get("default", "")
    literal = re.fullmatch(r"`([^`]+)`", cell)
    if literal:
        if default is dataclasses.MISSING or default is inspect.Parameter.empty:
            return f"{where}: documented default {cell}, but the code has none"
        if toml_value(literal.group(1)) != as_toml(default):
            return f"{where}: documented default {cell}, the code's is {default!r}"
    elif cell.lower().startswith("none") and default is not None:
        return f"{where}: documented as unset by default, the code's default is {default!r}"
    return None


def test_documented_defaults_are_the_code_defaults(sections):
    problems = []
    for table, (cls, _) in DATACLASS_TABLES.items():
        defaults = {
            f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
        }
        for row in sections.get(table, []):
            key = key_of(row)
            if key in defaults:
                problems.append(check_default(f"{table} {key}", row, defaults[key]))
    for method in method_names():
        parameters = inspect.signature(method_builder(method)).parameters
        table = f"[method_options.{method}]"
        for row in sections.get(table, []):
            key = key_of(row)
            if key in parameters:
                problems.append(check_default(f"{table} {key}", row, parameters[key].default))
    problems = [p for p in problems if p]
    assert not problems, "docs/specs.md's defaults have drifted from the code:\n" + "\n".join(problems)


def test_the_id_column_says_which_train_keys_make_a_cell_id(sections, tmp_path):
    """`yes`: in the cell's identity; `if not default`: only once changed; `no`: never."""
    path = tmp_path / "spec.toml"
    path.write_text(GRID)
    (cell,) = load_spec(path).cells
    changed = {
        bool: lambda v: not v,
        int: lambda v: 3 if v is None else v + 1,
        float: lambda v: v + 0.25,
        str: lambda v: v + "x",
    }
    problems = []
    for row in sections["[train]"]:
        key = key_of(row)
        value = getattr(cell.train, key)
        if key == "phases":
            other = (Phase(iterations=5, input_size=cell.train.input_size, lr=cell.train.lr),)
        elif key == "cue_sources":
            other = (("parsing", "spreid"),)
        elif isinstance(value, tuple):
            other = (*value, value[-1] + 1)
        else:
            kind = int if value is None else type(value)
            other = changed[kind](value)
        at_default = key in cell.identity()["train"]
        when_changed = (
            key in dataclasses.replace(cell, train=dataclasses.replace(cell.train, **{key: other})).identity()["train"]
        )
        actual = "yes" if at_default else "if not default" if when_changed else "no"
        if row.get("id") != actual:
            problems.append(f"[train] {key}: the id column says {row.get('id')!r}, the code: {actual!r}")
    assert not problems, "\n".join(problems)


def test_the_example_specs_in_the_docs_parse(tmp_path):
    examples = [
        (doc, block)
        for doc in DOCS
        for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
        if "[grid]" in block
    ]
    assert examples
    for doc, block in examples:
        path = tmp_path / "example.toml"
        path.write_text(block)
        assert load_spec(path).cells, f"an example spec in {doc.name} has no cells"


# -- links ----------------------------------------------------------------------------------------


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(markdown: str) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading(doc):
    broken = []
    for target in links(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path.read_text()):
            broken.append(f"{target}: no heading #{fragment} in {path.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)} has broken links:\n" + "\n".join(broken)
