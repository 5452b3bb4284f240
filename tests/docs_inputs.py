"""Small raw inputs that stand in for the datasets in the documented writer commands.

`make_raw_inputs(root)` writes, under `root/raw/`:

- `imagenet/{train,val}/<class>/*.png`: real scikit-learn digits as RGB PNGs in three
  class folders (the ImageNet layout). The train split also contains a text file and a
  truncated PNG, which the writer skips as "not an image file" and "unreadable image".
- `molecules.smi`: seven SMILES lines. One has sulfur (outside the QM9 elements), one
  has 38 atoms with hydrogens (more than 29), and one does not parse.
- `qm9/gdb9.sdf` and `qm9/xyz/*.xyz`: small molecules with RDKit conformers.
- `videos/*.mp4`: two short clips of a moving square written with PyAV (one with a
  per-frame `.actions.npy`), a one-frame clip (skipped as "too short") and a file that
  is not a video ("unreadable video").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = (0, 1, 2)
SMILES_LINES = (
    "smiles name",
    "CCO ethanol",
    "c1ccccc1 benzene",
    "CC(=O)O acetic_acid",
    "NC1CC1 cyclopropylamine",
    "CS(C)=O dimethyl_sulfoxide",
    "CCCCCCCCCCCC dodecane",
    "C1CC( unclosed_ring",
)


def _write_images(raw: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, first, count in (("train", 0, 4), ("val", 10, 2)):
        for label in CLASSES:
            folder = raw / "imagenet" / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in np.flatnonzero(digits.target == label)[first : first + count]:
                pixels = (digits.images[index] * 16).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).convert("RGB").save(folder / f"digit_{index}.png")
    damaged = raw / "imagenet" / "train" / "digit2"
    (damaged / "notes.txt").write_text("not an image\n")
    (damaged / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))


def _write_molecules(raw: Path) -> None:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    (raw / "molecules.smi").write_text("\n".join(SMILES_LINES) + "\n")
    xyz_folder = raw / "qm9" / "xyz"
    xyz_folder.mkdir(parents=True, exist_ok=True)
    writer = Chem.SDWriter(str(raw / "qm9" / "gdb9.sdf"))
    for number, smiles in enumerate(("C", "N", "O", "CC#N", "OC=O")):
        molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(molecule, randomSeed=number)
        writer.write(molecule)
        if number < 2:
            (xyz_folder / f"molecule_{number}.xyz").write_text(Chem.MolToXYZBlock(molecule))
    writer.close()


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """Encode uint8 frames (T, H, W, 3) as H.264 in an MP4 container with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _moving_square(num_frames: int, step: int) -> np.ndarray:
    frames = np.zeros((num_frames, 48, 64, 3), dtype=np.uint8)
    for t in range(num_frames):
        left = (8 + step * t) % 48
        frames[t, 16:32, left : left + 16] = (255, 128, 0)
    return frames


def _write_videos(raw: Path) -> None:
    folder = raw / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    _write_mp4(folder / "square_right.mp4", _moving_square(40, 1))
    np.save(folder / "square_right.actions.npy", np.arange(40, dtype=np.int64) % 4)
    _write_mp4(folder / "square_left.mp4", _moving_square(30, -1))
    _write_mp4(folder / "one_frame.mp4", _moving_square(1, 0))
    (folder / "not_a_video.mp4").write_bytes(b"this is not a video\n")


def make_raw_inputs(root: Path) -> Path:
    """Write the stand-in inputs under `root/raw` and return that folder."""
    raw = root / "raw"
    _write_images(raw)
    _write_molecules(raw)
    _write_videos(raw)
    return raw
