"""Write 3-D molecules as WebDataset shards for the molecule data stream.

Each sample has two members:

- ``npz``: a NumPy archive with ``elements`` (int8 atomic numbers, shape (N,)) and
  ``positions`` (float32 Cartesian coordinates in angstrom, shape (N, 3)). Positions
  are stored as read, and the data stream centres them;
- ``smi``: the canonical RDKit SMILES (UTF-8 text, stereo kept where the source has it;
  empty when the source has none and bonds cannot be inferred from the geometry).

Inputs are checked in this order, and each failure is skipped and counted in the index
under its reason: the reader's own failure ("unparsable SMILES", "unparsable molecule",
"unparsable XYZ", "unparsable coordinates"), "element outside vocabulary", "too many
atoms" (hydrogens included), then "embedding failed" for inputs without 3-D coordinates.
Inputs without coordinates get hydrogens and one conformer from RDKit's ETKDG (v3) with
a fixed seed, refined with the MMFF94 force field (UFF where MMFF lacks parameters).

Command line (the ``unisep data molecules`` sub-command)::

    unisep data molecules --source qm9pack data/qm9            # train/, val/, test/
    unisep data molecules --source smiles my.smi data/mine --elements H,C,N,O,F,S,Cl
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem
from rich.progress import track

from unisep.datamodules.molecule_sources import (
    QM9PACK_NUM_MOLECULES,
    QM9_SPLIT_SEED,
    QM9_SPLIT_SIZES,
    QM9_SPLITS,
    SOURCES,
    MoleculeRecord,
    load_qm9pack_table,
    read_molecules,
)
from unisep.datamodules.molecule_vocabulary import QM9_ELEMENTS, QM9_MAX_ATOMS, ElementVocabulary
from unisep.datamodules.shards import ShardIndex, ShardSetWriter
from unisep.datamodules.writer_command import add_output_arguments, describe_skipped, run_writer, writer_main
from unisep.metrics.molecules import AtomCloud, BondInferenceError, canonical_smiles, infer_bonds

WRITE_COMMAND = "unisep data molecules --source qm9pack data/qm9"

#: Optimisation steps of the force-field refinement after embedding.
FORCE_FIELD_MAX_ITERATIONS = 500


def encode_npz(atomic_numbers: np.ndarray, positions: np.ndarray) -> bytes:
    """Pack one molecule into the bytes of an ``.npz`` shard member."""
    buffer = io.BytesIO()
    np.savez(buffer, elements=np.asarray(atomic_numbers, dtype=np.int8), positions=np.asarray(positions, dtype=np.float32))
    return buffer.getvalue()


def decode_npz(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Unpack an ``.npz`` shard member into atomic numbers (N,) int64 and positions (N, 3) float32.

    Raises:
        ValueError: the member is not an archive with consistent ``elements`` and
            ``positions`` arrays.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            elements = archive["elements"].astype(np.int64)
            positions = archive["positions"].astype(np.float32)
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"invalid molecule npz member: {error!r}") from error
    if elements.ndim != 1 or positions.shape != (elements.shape[0], 3):
        raise ValueError(f"invalid molecule npz member: elements {elements.shape} and positions {positions.shape} disagree")
    return elements, positions


def embed_molecule(molecule: Chem.Mol, seed: int = 0) -> tuple[Chem.Mol, str]:
    """Give a molecule hydrogens and one optimised 3-D conformer.

    Args:
        molecule: an RDKit molecule, with or without explicit hydrogens.
        seed: random seed of ETKDG, fixed so that the same input gives the same shards.

    Returns:
        The molecule with explicit hydrogens and a conformer, and the force field used
        ("MMFF94", "UFF" or "none").

    Raises:
        ValueError: if ETKDG finds no conformer.
    """
    molecule = Chem.AddHs(molecule)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(molecule, params) < 0:
        # Random initial coordinates rescue some strained or large ring systems.
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(molecule, params) < 0:
            raise ValueError("ETKDG found no 3-D conformer")
    if AllChem.MMFFHasAllMoleculeParams(molecule):
        AllChem.MMFFOptimizeMolecule(molecule, maxIters=FORCE_FIELD_MAX_ITERATIONS)
        return molecule, "MMFF94"
    if AllChem.UFFHasAllMoleculeParams(molecule):
        AllChem.UFFOptimizeMolecule(molecule, maxIters=FORCE_FIELD_MAX_ITERATIONS)
        return molecule, "UFF"
    return molecule, "none"


class MoleculeSampleBuilder:
    """Validate `MoleculeRecord`s and turn them into shard samples.

    Args:
        vocabulary: the elements a molecule may contain.
        max_atoms: largest atom count, hydrogens included.
        embed_seed: ETKDG seed for inputs without coordinates.
    """

    def __init__(self, vocabulary: ElementVocabulary, max_atoms: int, embed_seed: int = 0):
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        self.vocabulary = vocabulary
        self.max_atoms = max_atoms
        self.embed_seed = embed_seed
        self.force_fields: dict[str, int] = {}

    def build(self, record: MoleculeRecord) -> tuple[dict[str, object] | None, str | None, str | None]:
        """Return `(sample, None, None)`, or `(None, reason, detail)` for a skipped input."""
        if record.error is not None:
            return None, record.error, record.detail

        molecule = None
        if record.positions is None:
            if record.molecule is None:
                return None, "no structure", "the record has neither positions nor a molecule"
            molecule = Chem.AddHs(record.molecule)
            numbers = np.array([atom.GetAtomicNum() for atom in molecule.GetAtoms()], dtype=np.int64)
        else:
            numbers = np.asarray(record.atomic_numbers, dtype=np.int64)

        # Cheap checks first, so no time is spent embedding a molecule that is skipped.
        outside = self.vocabulary.outside(numbers)
        if outside:
            return None, "element outside vocabulary", f"{outside} not in {list(self.vocabulary.symbols)}"
        if len(numbers) > self.max_atoms:
            return None, "too many atoms", f"{len(numbers)} atoms with hydrogens > max_atoms {self.max_atoms}"
        if len(numbers) == 0:
            return None, "no atoms", None

        positions = record.positions
        if molecule is not None:
            try:
                molecule, force_field = embed_molecule(molecule, self.embed_seed)
            except ValueError as error:
                return None, "embedding failed", str(error)
            self.force_fields[force_field] = self.force_fields.get(force_field, 0) + 1
            positions = molecule.GetConformer().GetPositions()
        if not np.isfinite(positions).all():
            return None, "non-finite coordinates", None

        smiles = _canonical_or_inferred(record.smiles, numbers, positions)
        return {"__key__": record.key, "npz": encode_npz(numbers, positions), "smi": smiles}, None, None


def _canonical_or_inferred(smiles: str | None, numbers: np.ndarray, positions: np.ndarray) -> str:
    """Canonicalise the source's SMILES, or infer one from the geometry when it has none."""
    if smiles:
        molecule = Chem.MolFromSmiles(smiles)
        if molecule is not None:
            return Chem.MolToSmiles(molecule)
    try:
        return canonical_smiles(infer_bonds(AtomCloud(numbers, positions))) or ""
    except BondInferenceError:
        return ""


def write_molecule_records(
    records: Iterable[MoleculeRecord],
    out_folder: str | Path,
    *,
    settings: dict[str, object],
    elements: Sequence[str] = QM9_ELEMENTS,
    max_atoms: int = QM9_MAX_ATOMS,
    embed_seed: int = 0,
    max_samples_per_shard: int = 5000,
    overwrite: bool = False,
    progress: bool = True,
    total: int | None = None,
    prefix: str | None = None,
) -> ShardIndex:
    """Validate records and write the usable ones as one shard set.

    Args:
        records: molecules from `read_molecules`.
        out_folder: folder for the tars and ``index.json``.
        settings: description of the input, stored in the index with the options below.
        elements: element symbols a molecule may contain.
        max_atoms: largest atom count with hydrogens.
        embed_seed: ETKDG seed for inputs without coordinates.
        max_samples_per_shard: samples per tar file.
        overwrite: replace an existing shard set in `out_folder` instead of raising.
        progress: show a progress bar.
        total: number of records, for the progress bar.
        prefix: shard file name prefix; the folder name when None.

    Returns:
        The index written to ``out_folder/index.json``.
    """
    vocabulary = ElementVocabulary(elements)
    builder = MoleculeSampleBuilder(vocabulary, max_atoms, embed_seed)
    out = Path(out_folder)
    writer_settings = {
        **settings,
        "elements": list(vocabulary.symbols),
        "max_atoms": max_atoms,
        "embed_seed": embed_seed,
        "embedding": "ETKDGv3 + MMFF94 (UFF fallback) for inputs without coordinates",
        "positions": "angstrom, as read (not centred)",
    }
    with ShardSetWriter(
        out,
        modality="molecule",
        prefix=prefix or out.resolve().name,
        max_samples_per_shard=max_samples_per_shard,
        settings=writer_settings,
        overwrite=overwrite,
    ) as writer:
        for record in track(records, description=f"Writing {out.name}", total=total, disable=not progress):
            sample, reason, detail = builder.build(record)
            if sample is None:
                writer.skip(record.key, reason or "unknown", detail)
            else:
                writer.write(sample)
        # The force-field counts are known only now, and close() writes them into the index.
        writer.settings["force_fields"] = dict(builder.force_fields)
    assert writer.index is not None
    return writer.index


def write_molecule_shards(
    source: str,
    input_path: str | Path | None,
    out_folder: str | Path,
    *,
    split: str | None = None,
    split_seed: int = QM9_SPLIT_SEED,
    limit: int | None = None,
    qm9pack_table=None,
    **options,
) -> ShardIndex:
    """Read one source and write its molecules as one shard set.

    Args:
        source: "qm9pack", "sdf", "xyz" or "smiles".
        input_path: file or folder to read; for "qm9pack", the folder of its CSV files
            or None for the installed package.
        out_folder: folder for the tars and ``index.json``.
        split: for "qm9pack" only: "train", "val", "test", or None for every molecule.
        split_seed: seed of the QM9 split permutation.
        limit: read at most this many input records.
        qm9pack_table: the output of `load_qm9pack_table`, to read the CSV files once
            when writing several splits.
        **options: `write_molecule_records` options (elements, max_atoms, ...).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown molecule source {source!r}; choose one of {SOURCES}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    settings: dict[str, object] = {"source": source, "input": None if input_path is None else str(Path(input_path).resolve())}
    total = None
    if source == "qm9pack":
        records = read_molecules(source, input_path, split=split, split_seed=split_seed, limit=limit, table=qm9pack_table)
        settings.update(split=split, split_seed=split_seed, split_sizes=dict(QM9_SPLIT_SIZES, test="rest"), limit=limit)
        total = _expected_qm9_count(split, limit)
    else:
        if split is not None:
            raise ValueError(f"split applies to the qm9pack source only; {source} files are written whole")
        records = read_molecules(source, input_path)
        if limit is not None:
            records = (record for _, record in zip(range(limit), records))
        settings["limit"] = limit
    return write_molecule_records(records, out_folder, settings=settings, total=total, **options)


def _expected_qm9_count(split: str | None, limit: int | None) -> int:
    """Return the record count of a qm9pack split, for the progress bar."""
    sizes = {**QM9_SPLIT_SIZES, "test": QM9PACK_NUM_MOLECULES - sum(QM9_SPLIT_SIZES.values()), None: QM9PACK_NUM_MOLECULES}
    return min(sizes[split], limit) if limit is not None else sizes[split]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``unisep data molecules`` options to `parser` and return it."""
    parser.add_argument("--source", choices=SOURCES, required=True, help="kind of input: the QM9 copy in qm9pack, SD files, XYZ files or SMILES files")
    parser.add_argument(
        "input",
        nargs="?",
        type=Path,
        default=None,
        help="input file or folder (for --source qm9pack: omit it to use the installed package, or give the folder of its CSV files)",
    )
    parser.add_argument("out", type=Path, help="output folder; with --source qm9pack --split all, train/, val/ and test/ are written inside it")
    parser.add_argument(
        "--split",
        choices=(*QM9_SPLITS, "all"),
        default=None,
        help="QM9 split to write (qm9pack only; 100,000 / 17,748 / 13,083 molecules). Default for qm9pack: all",
    )
    parser.add_argument("--max-atoms", type=int, default=QM9_MAX_ATOMS, help=f"largest atom count, hydrogens included (default: {QM9_MAX_ATOMS})")
    parser.add_argument("--elements", default=",".join(QM9_ELEMENTS), help="comma-separated element vocabulary (default: H,C,N,O,F)")
    parser.add_argument("--limit", type=int, default=None, help="read at most N input molecules (per split)")
    parser.add_argument("--seed", type=int, default=0, help="ETKDG seed for inputs without 3-D coordinates (default: 0)")
    parser.add_argument("--shard-size", type=int, default=5000, help="molecules per tar shard (default: 5000)")
    add_output_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``unisep data molecules`` with parsed arguments; return the exit status."""
    options = dict(
        elements=[symbol.strip() for symbol in args.elements.split(",") if symbol.strip()],
        max_atoms=args.max_atoms,
        embed_seed=args.seed,
        max_samples_per_shard=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        limit=args.limit,
    )
    split = args.split or ("all" if args.source == "qm9pack" else None)
    targets = [(s, args.out / s) for s in QM9_SPLITS] if split == "all" else [(split, args.out)]

    def write() -> None:
        if args.source == "qm9pack":
            options["qm9pack_table"] = load_qm9pack_table(args.input)
        for name, out in targets:
            index = write_molecule_shards(args.source, args.input, out, split=name, **options)
            skipped = describe_skipped(index.skipped)
            print(f"wrote {index.num_samples} molecules in {len(index.shards)} shards to {out} ({skipped})")

    return run_writer(write)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m unisep.datamodules.molecule_writer --source ... OUT``."""
    return writer_main(argv, prog="unisep data molecules", doc=__doc__, add_arguments=add_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
