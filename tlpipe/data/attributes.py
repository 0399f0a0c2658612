"""Class attribute tables for zero-shot learning: each class described by properties a person can check.

The built-in digit domains use DIGITS; image folders give a CSV file: a header `class,<attribute>,...`
and one row per class with 0/1 (or any number in [0, 1]) per attribute.
"""

import csv
import io
import tempfile
from pathlib import Path

from tlpipe import storage
from tlpipe.errors import TlpipeError

DIGIT_ATTRIBUTES = ["closed_loop", "two_loops", "vertical_stem", "horizontal_bar", "diagonal_stroke", "curve",
                    "symmetric_left_right", "symmetric_top_bottom", "open_to_the_left", "loop_on_top"]
DIGITS = {
    "0": [1, 0, 0, 0, 0, 1, 1, 1, 0, 0],
    "1": [0, 0, 1, 0, 0, 0, 1, 1, 0, 0],
    "2": [0, 0, 0, 1, 1, 1, 0, 0, 1, 0],
    "3": [0, 0, 0, 0, 0, 1, 0, 1, 1, 0],
    "4": [0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
    "5": [0, 0, 1, 1, 0, 1, 0, 0, 1, 0],
    "6": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    "7": [0, 0, 0, 1, 1, 0, 0, 0, 1, 0],
    "8": [1, 1, 0, 0, 0, 1, 1, 1, 0, 1],
    "9": [1, 0, 1, 0, 0, 1, 0, 0, 1, 1],
}


def read_table(location: str) -> tuple[list[str], dict[str, list[float]]]:
    """Attribute names and {class: vector} from a CSV file (local or s3://)."""
    if storage.is_s3(location):
        with tempfile.TemporaryDirectory() as tmp:
            return read_table(str(storage.download(location, Path(tmp) / "attributes.csv")))
    path = Path(location)
    if not path.is_file():
        raise TlpipeError(f"attribute table {location} does not exist.")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise TlpipeError(f"attribute table {location} needs a header `class,<attribute>,...` and a row per class.")
    names, table = rows[0][1:], {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(names) + 1:
            raise TlpipeError(f"attribute table {location}, line {number}: {len(row) - 1} values for {len(names)} attributes.")
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise TlpipeError(f"attribute table {location}, line {number}: values must be numbers in [0, 1].") from None
        if not all(0 <= v <= 1 for v in values):
            raise TlpipeError(f"attribute table {location}, line {number}: values must be numbers in [0, 1].")
        table[row[0]] = values
    return names, table


def signatures(classes: list[str], location: str) -> dict:
    """{"names", "table"} for the classes, from `location` or, for the digit classes, the built-in table."""
    if location:
        names, table = read_table(location)
    elif sorted(classes) == sorted(DIGITS):
        names, table = DIGIT_ATTRIBUTES, DIGITS
    else:
        raise TlpipeError("zero-shot needs an attribute table for these classes: set the attributes parameter to a "
                          "CSV file (class,<attribute>,...).")
    missing = [c for c in classes if c not in table]
    if missing:
        raise TlpipeError(f"the attribute table has no row for class(es) {missing}.")
    vectors = [tuple(table[c]) for c in classes]
    if len(set(vectors)) < len(vectors):
        raise TlpipeError("two classes have the same attribute signature; zero-shot could not tell them apart.")
    return {"names": names, "table": {c: table[c] for c in classes}}
