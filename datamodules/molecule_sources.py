"""Readers that turn raw molecule files into `MoleculeRecord`s for the shard writer.

Four sources are supported:

- ``qm9pack``: the 130,831 QM9 molecules shipped inside the `qm9pack` package (MIT,
  version 1.0.3 checked) as CSV tables with SMILES, element lists and DFT (B3LYP/6-31G(2df,p))
  coordinates in angstrom. They are the QM9 molecules minus the 3,054 whose geometry
  failed the original consistency check. The package's own `get_data` imports
  `pkg_resources`, which recent setuptools no longer ships, so the CSV files are read
  directly.
- ``sdf``: SD files, 3-D or 2-D. A 2-D or coordinate-free record gets a conformer from
  RDKit's ETKDG in the writer.
- ``xyz``: XYZ files holding one or several molecules (blocks of a count line, a comment
  line and one ``symbol x y z`` line per atom). The original QM9 ``.xyz`` files, with
  their extra columns, ``*^`` exponents and trailing property lines, read too.
- ``smiles``: one SMILES per line, optionally followed by a name; conformers come from
  ETKDG in the writer.

A path may be a file or a folder, whose matching files are read in sorted order.
A bad record does not stop a reader. It yields a record with an `error` reason, and
the writer counts it as skipped. Missing files and folders still raise.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem

from unisep.datamodules.molecule_vocabulary import atomic_number

SOURCES = ("qm9pack", "sdf", "xyz", "smiles")

#: File name suffixes read from a folder, per source.
SOURCE_SUFFIXES = {"sdf": (".sdf", ".sd", ".mol"), "xyz": (".xyz",), "smiles": (".smi", ".smiles", ".txt")}

#: QM9 split sizes of EDM (Hoogeboom et al., 2022): 100,000 training and 17,748
#: validation molecules. The test split is the remainder, 13,083 molecules (10%).
QM9_SPLIT_SIZES = {"train": 100_000, "val": 17_748}
QM9_SPLITS = ("train", "val", "test")
QM9_SPLIT_SEED = 0

#: Molecules in qm9pack 1.0.3.
QM9PACK_NUM_MOLECULES = 130_831

_QM9PACK_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_QM9PACK_COLUMNS = ["Index", "SMILES", "Elements", "XYZ_Ang"]
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class MoleculeRecord:
    """One input molecule before validation.

    Exactly one of these describes the molecule: `positions` with `atomic_numbers`
    (3-D input, hydrogens included), or `molecule` (an RDKit molecule without usable
    3-D coordinates, to be embedded), or `error` (the input could not be read).

    Attributes:
        key: sample key, unique within a shard set, without dots.
        atomic_numbers: (num_atoms,) int atomic numbers.
        positions: (num_atoms, 3) float coordinates in angstrom, as read.
        molecule: RDKit molecule that still needs a 3-D conformer.
        smiles: SMILES given by the source, if any.
        error: short reason why the input is unusable, e.g. "unparsable SMILES".
        detail: longer explanation for the log.
    """

    key: str
    atomic_numbers: np.ndarray | None = None
    positions: np.ndarray | None = None
    molecule: Chem.Mol | None = None
    smiles: str | None = None
    error: str | None = None
    detail: str | None = None


def safe_key(text: str) -> str:
    """Replace characters that webdataset keys cannot hold (dots, spaces, slashes) by '_'."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_") or "x"


def source_files(path: str | Path, source: str) -> list[Path]:
    """List the input files of a file-based source: the file itself or a folder's files.

    Raises:
        FileNotFoundError: the path does not exist or the folder has no matching file.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"molecule input {path} does not exist")
    suffixes = SOURCE_SUFFIXES[source]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"{path} contains no {source} files (looked for {', '.join(suffixes)})")
    return files


# ---------------------------------------------------------------------------------------
# qm9pack


def qm9pack_data_folder() -> Path:
    """Return the folder of the QM9 CSV files inside the installed `qm9pack` package.

    Raises:
        FileNotFoundError: when qm9pack is not installed or its data files are missing.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the QM9 molecules come from the package qm9pack, which is not installed; "
            "install it with `pip install qm9pack pandas`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in _QM9PACK_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack data files {missing} are missing from {folder}; reinstall qm9pack")
    return folder


def load_qm9pack_table(data_folder: str | Path | None = None):
    """Read the QM9 table (pandas DataFrame) sorted by QM9 index.

    Columns: `Index` (the QM9 molecule number, 1 to 133,885 with gaps), `SMILES`,
    `Elements` (a list literal such as "['C','H']") and `XYZ_Ang` (nested list of
    coordinates in angstrom).
    """
    import pandas as pd

    folder = Path(data_folder) if data_folder is not None else qm9pack_data_folder()
    frames = [pd.read_csv(folder / name, usecols=_QM9PACK_COLUMNS) for name in _QM9PACK_FILES]
    return pd.concat(frames, ignore_index=True).sort_values("Index", kind="stable").reset_index(drop=True)


def qm9_split_rows(num_molecules: int, seed: int = QM9_SPLIT_SEED) -> dict[str, np.ndarray]:
    """Split row positions 0..num_molecules-1 into train, val and test.

    A fixed-seed permutation (NumPy PCG64) is cut into 100,000 training and 17,748
    validation rows, and the remainder (13,083 for the full table) is the test split.
    The sizes match EDM's split; the membership is this function's own, so results are
    comparable in protocol but not molecule for molecule.

    Returns:
        `{"train": rows, "val": rows, "test": rows}`, each in permuted order.
    """
    needed = QM9_SPLIT_SIZES["train"] + QM9_SPLIT_SIZES["val"]
    if num_molecules <= needed:
        raise ValueError(f"the QM9 split needs more than {needed} molecules, got {num_molecules}")
    order = np.random.default_rng(seed).permutation(num_molecules)
    train_end = QM9_SPLIT_SIZES["train"]
    return {"train": order[:train_end], "val": order[train_end:needed], "test": order[needed:]}


def _qm9pack_record(index: int, smiles: str, elements: str, coordinates: str) -> MoleculeRecord:
    key = f"qm9_{index:06d}"
    try:
        symbols = [symbol.strip().strip("'\"") for symbol in elements.strip("[]").split(",")]
        numbers = np.array([atomic_number(symbol) for symbol in symbols], dtype=np.int64)
        # "0." is valid Python but not valid JSON, so split the nested list by hand.
        positions = np.array(coordinates.replace("[", " ").replace("]", " ").split(","), dtype=np.float64)
        positions = positions.reshape(len(numbers), 3)
    except ValueError as error:
        return MoleculeRecord(key, error="unparsable coordinates", detail=str(error))
    return MoleculeRecord(key, atomic_numbers=numbers, positions=positions, smiles=smiles)


def read_qm9pack(
    split: str | None = "train",
    *,
    data_folder: str | Path | None = None,
    split_seed: int = QM9_SPLIT_SEED,
    limit: int | None = None,
    table=None,
) -> Iterator[MoleculeRecord]:
    """Yield QM9 molecules from qm9pack, optionally one split of them.

    Args:
        split: "train", "val", "test", or None for all molecules in QM9 index order.
        data_folder: folder of the qm9pack CSV files; the installed package's when None.
        split_seed: seed of the split permutation.
        limit: yield at most this many molecules (the first ones of the split order).
        table: the output of `load_qm9pack_table`, to avoid reading the CSV files again.
    """
    if table is None:
        table = load_qm9pack_table(data_folder)
    if split is None:
        rows = np.arange(len(table))
    elif split in QM9_SPLITS:
        rows = qm9_split_rows(len(table), split_seed)[split]
    else:
        raise ValueError(f"split must be one of {QM9_SPLITS} or None, got {split!r}")
    if limit is not None:
        rows = rows[:limit]
    indices = table["Index"].to_numpy()
    smiles, elements, coordinates = (table[column].to_numpy() for column in ("SMILES", "Elements", "XYZ_Ang"))
    for row in rows:
        yield _qm9pack_record(int(indices[row]), str(smiles[row]), str(elements[row]), str(coordinates[row]))


# ---------------------------------------------------------------------------------------
# SDF


def read_sdf(path: str | Path) -> Iterator[MoleculeRecord]:
    """Yield the molecules of SD files; 2-D records come without positions."""
    for file in source_files(path, "sdf"):
        supplier = Chem.SDMolSupplier(str(file), removeHs=False, sanitize=True)
        for number, molecule in enumerate(supplier):
            key = f"{safe_key(file.stem)}_{number:06d}"
            if molecule is None:
                yield MoleculeRecord(key, error="unparsable molecule", detail=f"record {number} of {file}")
                continue
            has_3d = molecule.GetNumConformers() > 0 and molecule.GetConformer().Is3D()
            smiles = Chem.MolToSmiles(Chem.RemoveHs(molecule))
            if not has_3d:
                molecule.RemoveAllConformers()
                yield MoleculeRecord(key, molecule=molecule, smiles=smiles)
                continue
            # Hydrogens that the file leaves implicit get positions from the heavy atoms.
            molecule = Chem.AddHs(molecule, addCoords=True)
            Chem.AssignStereochemistryFrom3D(molecule)
            numbers = np.array([atom.GetAtomicNum() for atom in molecule.GetAtoms()], dtype=np.int64)
            positions = molecule.GetConformer().GetPositions()
            yield MoleculeRecord(key, atomic_numbers=numbers, positions=positions, smiles=Chem.MolToSmiles(Chem.RemoveHs(molecule)))


# ---------------------------------------------------------------------------------------
# XYZ


def _parse_count(line: str) -> int | None:
    fields = line.split()
    if len(fields) == 1 and fields[0].isdigit() and int(fields[0]) > 0:
        return int(fields[0])
    return None


def _parse_xyz_atoms(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    numbers, positions = [], []
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            raise ValueError(f"atom line {line.strip()!r} has fewer than 4 fields (symbol x y z)")
        symbol = fields[0]
        # A few writers put atomic numbers instead of symbols.
        numbers.append(int(symbol) if symbol.isdigit() else atomic_number(symbol.capitalize()))
        # Mathematica-style exponents ("1.5*^-6") appear in the original QM9 files.
        positions.append([float(value.replace("*^", "e")) for value in fields[1:4]])
    return np.array(numbers, dtype=np.int64), np.array(positions, dtype=np.float64)


def read_xyz(path: str | Path) -> Iterator[MoleculeRecord]:
    """Yield every molecule block of XYZ files.

    A block starts at a line holding only a positive atom count. Lines between blocks
    that are not counts (the property lines of QM9's files) are ignored.
    """
    for file in source_files(path, "xyz"):
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        position, number = 0, 0
        while position < len(lines):
            count = _parse_count(lines[position])
            if count is None:
                position += 1
                continue
            key = f"{safe_key(file.stem)}_{number:06d}"
            number += 1
            block = lines[position + 2 : position + 2 + count]
            try:
                if len(block) < count:
                    raise ValueError(f"expected {count} atom lines, found {len(block)} before the end of the file")
                numbers, positions = _parse_xyz_atoms(block)
            except ValueError as error:
                yield MoleculeRecord(key, error="unparsable XYZ", detail=f"{file}, line {position + 1}: {error}")
                position += 1
                continue
            yield MoleculeRecord(key, atomic_numbers=numbers, positions=positions)
            position += 2 + count


# ---------------------------------------------------------------------------------------
# SMILES


def read_smiles(path: str | Path) -> Iterator[MoleculeRecord]:
    """Yield the molecules of SMILES files: one SMILES per line, then an optional name.

    Empty lines, lines starting with '#' and a header line whose first field is
    "smiles" are ignored.
    """
    for file in source_files(path, "smiles"):
        for line_number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#") or fields[0].lower() == "smiles":
                continue
            key = f"{safe_key(file.stem)}_{line_number:06d}"
            molecule = Chem.MolFromSmiles(fields[0])
            if molecule is None:
                yield MoleculeRecord(key, error="unparsable SMILES", detail=f"{file}, line {line_number}: {fields[0]!r}")
                continue
            yield MoleculeRecord(key, molecule=molecule, smiles=Chem.MolToSmiles(molecule))


def read_molecules(source: str, path: str | Path | None, **qm9pack_options) -> Iterator[MoleculeRecord]:
    """Dispatch to the reader of `source` ("qm9pack", "sdf", "xyz" or "smiles").

    For "qm9pack", `path` is the folder of its CSV files or None for the installed
    package, and `qm9pack_options` go to `read_qm9pack`.
    """
    if source == "qm9pack":
        return read_qm9pack(data_folder=path, **qm9pack_options)
    if qm9pack_options:
        raise ValueError(f"options {sorted(qm9pack_options)} apply only to the qm9pack source, not {source!r}")
    if path is None:
        raise ValueError(f"the {source} source needs an input file or folder")
    readers = {"sdf": read_sdf, "xyz": read_xyz, "smiles": read_smiles}
    if source not in readers:
        raise ValueError(f"unknown molecule source {source!r}; choose one of {SOURCES}")
    return readers[source](path)
