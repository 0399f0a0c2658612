"""Images stored as shards of encoded bytes: the body of every dataset artifact.

A shard folder holds LitData chunks (`shards/`: index.json and chunk-*.bin, each image's stored
JPEG or PNG bytes) and a table (`samples.safetensors`: per image its id, label and the SHA-256 of its
stored bytes). LitData writes chunks as they fill, so writing holds a few chunks' worth at most, and
reads any image by position; the table is 56 bytes an image (56 MB for a million) and is all a
split or a hash needs. Every read checks the bytes against the table, so a damaged artifact stops the
step that reads it with its path, and decoding happens where the pixels are used (DataLoader workers).

LitData over MosaicML streaming: both write chunked shards that stream from S3 to distributed ranks;
LitData's writer takes one sample at a time with no schema (the two-pass ingest writes as it
decodes), its dataset reads any sample by position (what tlpipe's own seeded batch order needs for
bit-identical resume), and it is the more active of the two.
"""

import hashlib
import io
import json
import os
from array import array
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

from tlpipe.errors import TlpipeError

SHARDS = "shards"
TABLE = "samples.safetensors"
CHUNK_BYTES = 32 * 2**20  # LitData's chunk size; its writer needs several times a chunk in memory


def digest(stored: bytes) -> bytes:
    return hashlib.sha256(stored).digest()


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def decode(stored: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(stored)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class ShardWriter:
    """Writes encoded images to `directory` (shards/ and the table) one at a time."""

    def __init__(self, directory: str | Path):
        from litdata.streaming.writer import BinaryWriter

        self.directory = Path(directory)
        (self.directory / SHARDS).mkdir(parents=True, exist_ok=True)
        self._writer = BinaryWriter(str(self.directory / SHARDS), chunk_bytes=CHUNK_BYTES)
        self._ids, self._labels, self._digests = array("Q"), array("q"), bytearray()

    def add(self, stored: bytes, label: int, image_id: int, image_digest: bytes | None = None) -> None:
        image_digest = image_digest or digest(stored)
        self._writer.add_item(len(self._ids), stored)  # bare bytes: one item is read without its neighbours
        self._ids.append(int(image_id))
        self._labels.append(int(label))
        self._digests += image_digest

    def close(self) -> dict[str, np.ndarray]:
        """Writes the last chunk, LitData's index and the table; returns the table."""
        if self._ids:
            self._writer.done()
            self._writer.merge()
        table = {"ids": np.frombuffer(self._ids, dtype=np.uint64).copy(),
                 "labels": np.frombuffer(self._labels, dtype=np.int64).copy(),
                 "digests": np.frombuffer(bytes(self._digests), dtype=np.uint8).reshape(-1, 32)}
        save_file(table, str(self.directory / TABLE))
        _Store.forget(self.directory)  # a folder written again is opened again
        return table


def read_table(directory: str | Path) -> dict[str, np.ndarray]:
    return load_file(str(Path(directory) / TABLE))


class _Store:
    """One shard folder opened for reading, once per process."""

    _open: dict[tuple[int, str], "_Store"] = {}

    def __init__(self, directory: str):
        from litdata import StreamingDataset

        self.directory = directory
        self.digests = read_table(directory)["digests"]
        # Training reads in a global random order. batch_decode=0: decode only the item asked for (a
        # window, LitData's default for small items, is decoded whole for one image); max_pre_download:
        # keep every chunk of the local folder mapped (LitData maps 4), not one unmapped and another
        # mapped at almost every read. Mapping costs address space, not memory.
        shards = Path(directory) / SHARDS
        if len(self.digests):
            chunks = len(json.loads((shards / "index.json").read_text())["chunks"])
            self.dataset = StreamingDataset(str(shards), batch_decode=0, max_pre_download=max(2, chunks))
        else:
            self.dataset = None

    @classmethod
    def get(cls, directory: str) -> "_Store":
        key = (os.getpid(), directory)  # a forked worker opens its own
        if key not in cls._open:
            cls._open[key] = cls(directory)
        return cls._open[key]

    @classmethod
    def forget(cls, directory: str | Path) -> None:
        cls._open.pop((os.getpid(), str(Path(directory).resolve())), None)

    def read(self, position: int) -> tuple[bytes, bytes]:
        """The image's stored bytes, checked against its SHA-256, and that SHA-256."""
        try:
            stored = self.dataset[int(position)]
            if isinstance(stored, dict):  # an artifact of an earlier tlpipe, which stored {"image": bytes}
                stored = stored["image"]
            stored = bytes(stored)  # LitData may hand out a view into its mapped chunk: own a copy
        except Exception as error:  # whatever a damaged chunk makes LitData raise
            raise TlpipeError(f"image {position} in {self.directory} cannot be read from its shard ({error!r}); the "
                              "dataset artifact is damaged: ingest it again.") from None
        recorded = self.digests[position].tobytes()
        if digest(stored) != recorded:
            raise TlpipeError(f"image {position} in {self.directory} does not match its recorded SHA-256; the "
                              "dataset artifact is damaged: ingest it again.")
        return stored, recorded


class ShardedImages:
    """uint8 images (N, size, size, 3) read from shard folders when used. Indexed like a numpy array:
    an integer decodes one image; a slice, an index array or a mask gives a view (nothing is read);
    np.asarray decodes them all. Pickles as paths and positions, so it costs nothing to send to
    DataLoader workers or DDP ranks."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, folders: tuple[str, ...], rows: np.ndarray, size: int):
        self.folders = tuple(folders)
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)  # (folder number, position in it)
        self.size = size

    @classmethod
    def of_folder(cls, directory: str | Path, size: int, n: int) -> "ShardedImages":
        """All n images of one shard folder."""
        rows = np.stack([np.zeros(n, np.int64), np.arange(n, dtype=np.int64)], axis=1)
        return cls((str(Path(directory).resolve()),), rows, size)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.rows)

    def stored(self, i: int) -> tuple[bytes, bytes]:
        """The i-th image's stored (encoded) bytes, checked, and their SHA-256."""
        folder, position = self.rows[i]
        return _Store.get(self.folders[folder]).read(int(position))

    def storage_order(self, indices: list[int]) -> list[int]:
        """`indices` sorted as their images lie in the shards: read so, a random batch reads each chunk's
        images together instead of switching chunks at almost every image (measured: 1.67x the cost of
        reading in order when unsorted, 1.31x sorted; benchmarks/results/scale.md)."""
        rows = self.rows[indices]
        return [indices[i] for i in np.lexsort((rows[:, 1], rows[:, 0]))]

    def digests(self) -> np.ndarray:
        """(N, 32) SHA-256 digests of the stored bytes, from the tables (no image is read)."""
        out = np.empty((len(self), 32), dtype=np.uint8)
        for number, folder in enumerate(self.folders):
            mine = self.rows[:, 0] == number
            out[mine] = _Store.get(folder).digests[self.rows[mine, 1]]
        return out

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return decode(self.stored(int(index))[0])
        return ShardedImages(self.folders, self.rows[index], self.size)

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, dtype=np.uint8)
        for i in range(len(self)):
            out[i] = self[i]
        return out if dtype is None else out.astype(dtype)

    def concatenate(self, other: "ShardedImages") -> "ShardedImages":
        folders = self.folders + tuple(f for f in other.folders if f not in self.folders)
        remap = np.array([folders.index(f) for f in other.folders], dtype=np.int64)
        theirs = np.stack([remap[other.rows[:, 0]], other.rows[:, 1]], axis=1) if len(other) else other.rows
        return ShardedImages(folders, np.concatenate([self.rows, theirs]), self.size)
