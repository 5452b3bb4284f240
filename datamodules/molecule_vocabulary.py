"""The element vocabulary of a molecule data set: which elements a model can emit.

Atoms are tokens whose type is an index into the vocabulary. The index
`len(vocabulary)` is the padding class ("no atom"), so a model predicts the atom count
by predicting padding on the unused slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem

#: QM9's elements (Ramakrishnan et al., 2014): every molecule is made of these five.
QM9_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")

#: Largest QM9 molecule, hydrogens included (9 heavy atoms plus up to 20 hydrogens).
QM9_MAX_ATOMS = 29

_PERIODIC_TABLE = Chem.GetPeriodicTable()


def atomic_number(symbol: str) -> int:
    """Return the atomic number of an element symbol such as "C" or "Cl".

    Raises:
        ValueError: if the symbol is not an element.
    """
    try:
        number = _PERIODIC_TABLE.GetAtomicNumber(symbol)
    except RuntimeError:
        number = 0
    if not 1 <= number <= 118:
        raise ValueError(f"{symbol!r} is not an element symbol; use symbols such as 'H', 'C' or 'Cl'")
    return number


class ElementVocabulary:
    """An ordered list of elements, with the padding class after the last element.

    Args:
        symbols: element symbols in index order, e.g. ("H", "C", "N", "O", "F").

    Raises:
        ValueError: on an empty list, an unknown symbol or a repeated element.
    """

    def __init__(self, symbols: Sequence[str] = QM9_ELEMENTS):
        if isinstance(symbols, str) or not symbols:
            raise ValueError(f"symbols must be a non-empty list of element symbols, got {symbols!r}")
        numbers = [atomic_number(symbol) for symbol in symbols]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"element symbols must be distinct, got {list(symbols)}")
        self.symbols: tuple[str, ...] = tuple(_PERIODIC_TABLE.GetElementSymbol(n) for n in numbers)
        self.atomic_numbers: tuple[int, ...] = tuple(numbers)
        # Lookup table from atomic number to index; -1 marks elements outside the vocabulary.
        self._index_of = np.full(119, -1, dtype=np.int64)
        self._index_of[numbers] = np.arange(len(numbers))

    def __len__(self) -> int:
        return len(self.symbols)

    def __repr__(self) -> str:
        return f"ElementVocabulary({list(self.symbols)})"

    @property
    def padding_index(self) -> int:
        """Index of the "no atom" class, equal to the number of elements."""
        return len(self.symbols)

    def outside(self, atomic_numbers: Sequence[int] | np.ndarray) -> list[str]:
        """Return the sorted symbols of the given atoms that the vocabulary lacks."""
        numbers = np.asarray(atomic_numbers, dtype=np.int64)
        unknown = sorted(set(numbers[self._index_of[numbers] < 0].tolist()))
        return [_PERIODIC_TABLE.GetElementSymbol(int(n)) for n in unknown]

    def encode(self, atomic_numbers: Sequence[int] | np.ndarray) -> np.ndarray:
        """Map atomic numbers (N,) to vocabulary indices (N,) int64.

        Raises:
            ValueError: if an element is outside the vocabulary.
        """
        numbers = np.asarray(atomic_numbers, dtype=np.int64)
        if numbers.size and (numbers.min() < 1 or numbers.max() > 118):
            raise ValueError(f"atomic numbers must lie in [1, 118], got {numbers.tolist()}")
        missing = self.outside(numbers)
        if missing:
            raise ValueError(f"elements {missing} are outside the vocabulary {list(self.symbols)}")
        return self._index_of[numbers]

    def decode(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Map vocabulary indices (N,) to atomic numbers (N,); padding maps to 0."""
        table = np.asarray((*self.atomic_numbers, 0), dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() > self.padding_index):
            raise ValueError(f"indices must lie in [0, {self.padding_index}], got {indices.tolist()}")
        return table[indices]
