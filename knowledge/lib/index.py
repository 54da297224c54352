"""Per-organization vector indexes on local disk, shared by worker and web processes.

Each organization has one file, `<root>/<org_key>.faiss`, holding a FAISS index whose ids are
chunk primary keys. The database owns the vectors; these files are derived data. When a file is
missing or damaged the store raises `IndexMissing` or `IndexCorrupt` and the caller rebuilds it
with `rebuild` from the database.

Two kinds of index:

* exact: `IndexIDMap2(IndexFlatIP)`, used up to `approximate_threshold` live vectors;
* approximate: `IndexIDMap(IndexHNSWFlat)` beyond it. HNSW cannot delete, so a removed vector's
  slot becomes a tombstone, stored in the same file and excluded inside the search itself; once
  tombstones pass `compact_ratio` of the slots, the graph is rebuilt without them. Tombstones
  name slots rather than ids so that re-adding an id only costs a tombstone on its old slot.

Versions: each file records, in its header, the version of the organization's data it reflects
(a number the caller takes from the database, which counts the changes to the organization's
chunks). `apply` moves a file from one version to a later one with the changes in between and
never moves it backwards, so a process can tell whether its copy is current and catch up with
only what changed. A file may already hold changes beyond its version, never fewer: replaying a
change it holds (add an id again, remove an absent one) leaves it as it was.

Concurrency: every change is a read-modify-write of the whole file under an exclusive
`fcntl.flock` on `<root>/<org_key>.lock`, ending in an atomic `os.replace`, so concurrent writers
in different processes serialize and readers always see a complete file. Readers take no lock:
each search stats the file and reloads its in-memory copy when (mtime, size, inode) changed.
The version travels in the same file as the vectors, so the two can never disagree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
import tempfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, cast

import faiss
import numpy as np
import numpy.typing as npt

IndexKind = Literal["exact", "approximate"]

DEFAULT_APPROXIMATE_THRESHOLD = 20_000
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 128
DEFAULT_COMPACT_RATIO = 0.2
DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024

_MAGIC = b"KNOWIDX1"
_FORMAT_VERSION = 3
_HEADER_LENGTH = struct.Struct("<I")
_ORG_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


class IndexStoreError(Exception):
    """Base of the errors that mean "rebuild this organization's index from the database"."""


class IndexMissing(IndexStoreError):
    """The organization has no index file."""


class IndexCorrupt(IndexStoreError):
    """The organization's index file exists but cannot be trusted."""


class SearchHit(NamedTuple):
    id: int
    score: float


@dataclass(frozen=True)
class IndexInfo:
    kind: IndexKind
    count: int
    tombstones: int
    dim: int
    file_bytes: int
    version: int


@dataclass
class _State:
    """A private, mutable copy of one index file's content, owned by a single writer."""

    kind: IndexKind
    dim: int
    index: faiss.IndexIDMap
    # Sorted slot positions (not ids) whose vectors were removed; always empty for "exact".
    tombstones: npt.NDArray[np.int64]
    # The version of the organization's data this content reflects (see the module docstring).
    version: int = 0

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        ids: npt.NDArray[np.int64] = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return ids

    @property
    def slot_count(self) -> int:
        return int(self.index.ntotal)

    @property
    def live_count(self) -> int:
        return self.slot_count - len(self.tombstones)

    def live_mask(self) -> npt.NDArray[np.bool_]:
        mask = np.ones(self.slot_count, dtype=np.bool_)
        mask[self.tombstones] = False
        return mask


class _Snapshot:
    """A loaded index file, never mutated after construction, so searches need no lock.

    It keeps a descriptor of its file open: while the inode stays allocated, no newer file can
    be given the same inode number, so (mtime, size, inode) cannot match a different version
    even when writes land within one tick of the file system's clock.
    """

    def __init__(self, *, state: _State, key: tuple[int, int, int], pin: int) -> None:
        self._pin: int | None = pin
        self.key = key
        self.kind = state.kind
        self.dim = state.dim
        # Owns `inner` and `storage`, whose wrappers below do not keep it alive.
        self.index = state.index
        self.inner = faiss.downcast_index(state.index.index)
        # The flat vectors under either kind, searched directly for exact subset queries.
        self.storage = (
            self.inner
            if state.kind == "exact"
            else faiss.downcast_index(cast(faiss.IndexHNSWFlat, self.inner).storage)
        )
        self.ids = state.ids
        self.order = np.argsort(self.ids, kind="stable")
        self.sorted_ids = self.ids[self.order]
        self.tombstone_count = len(state.tombstones)
        self.live_count = state.live_count
        self.version = state.version
        self.nbytes = key[1]
        self.live_mask: npt.NDArray[np.bool_] | None = None
        self._live_bits: npt.NDArray[np.uint8] | None = None
        self._live_selector: faiss.IDSelectorBitmap | None = None
        if state.tombstones.size:
            self.live_mask = state.live_mask()
            # IDSelectorBitmap reads the buffer without owning it: keep both alive together.
            self._live_bits = np.packbits(self.live_mask, bitorder="little")
            self._live_selector = faiss.IDSelectorBitmap(len(self.live_mask), faiss.swig_ptr(self._live_bits))

    def __del__(self) -> None:
        if self._pin is not None:
            with contextlib.suppress(OSError):
                os.close(self._pin)
            self._pin = None

    def search(self, *, query: npt.NDArray[np.float32], k: int, ef_search: int) -> list[SearchHit]:
        if self.kind == "exact":
            scores, positions = self.inner.search(query, k)
        else:
            # Missing from the type stubs bundled with faiss-cpu 1.15, present at run time.
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(ef_search, k)
            if self._live_selector is not None:
                params.sel = self._live_selector
            scores, positions = self.inner.search(query, k, params=params)
        return self._hits(scores[0], positions[0])

    def search_subset(
        self, *, query: npt.NDArray[np.float32], k: int, allowed_ids: Iterable[int]
    ) -> list[SearchHit]:
        """Exact search restricted to `allowed_ids`, whatever the index kind.

        A graph search filtered down to a small subset misses most of it, so subsets are scanned
        exhaustively on the flat vectors; the scan skips non-members without computing them.
        """
        allowed = np.unique(np.fromiter(allowed_ids, dtype=np.int64))
        # An id re-added after removal has two slots (one tombstoned): take every slot per id.
        first = np.searchsorted(self.sorted_ids, allowed, side="left")
        counts = np.searchsorted(self.sorted_ids, allowed, side="right") - first
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        mask = np.zeros(len(self.ids), dtype=np.bool_)
        mask[self.order[np.repeat(first, counts) + offsets]] = True
        return self._masked_search(query=query, k=k, mask=mask)

    def _masked_search(
        self, *, query: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_]
    ) -> list[SearchHit]:
        if self.live_mask is not None:
            mask &= self.live_mask
        members = int(mask.sum())
        if members == 0:
            return []
        # Both locals stay referenced until the search returns: the selector does not own the
        # bits, and `params` does not keep the selector alive.
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        params = faiss.SearchParameters()
        params.sel = selector
        scores, positions = self.storage.search(query, min(k, members), params=params)
        return self._hits(scores[0], positions[0])

    def _hits(self, scores: npt.NDArray[np.float32], positions: npt.NDArray[np.int64]) -> list[SearchHit]:
        hits = []
        for score, position in zip(scores.tolist(), positions.tolist(), strict=True):
            if position < 0:
                continue
            # The selectors already exclude tombstones; this check makes the guarantee local.
            if self.live_mask is not None and not self.live_mask[position]:
                continue
            hits.append(SearchHit(id=int(self.ids[position]), score=float(score)))
        return hits


class IndexStore:
    """The vector indexes of all organizations under `root`. Safe across threads and processes.

    `ef_search` trades latency for recall of the approximate index; `compact_ratio` is the share
    of tombstones that triggers a rebuild of the graph; `cache_bytes` bounds the loaded indexes
    kept in memory per process (the most recently used one is always kept).
    """

    def __init__(
        self,
        root: Path,
        *,
        approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        compact_ratio: float = DEFAULT_COMPACT_RATIO,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.approximate_threshold = approximate_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.compact_ratio = compact_ratio
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, _Snapshot] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    # Reads -----------------------------------------------------------------------------------

    def search(
        self,
        *,
        org_key: str,
        query_vector: npt.ArrayLike,
        k: int,
        allowed_ids: Iterable[int] | None = None,
    ) -> list[SearchHit]:
        """The `k` nearest chunk ids by cosine similarity, best first.

        With `allowed_ids`, only those ids are candidates and the search is exact. A removed id
        is never returned. Raises `IndexMissing` / `IndexCorrupt`.
        """
        if k <= 0:
            raise ValueError("k must be positive")
        snapshot = self._snapshot(org_key)
        query = _normalized(query_vector, what="query_vector").reshape(1, -1)
        if query.shape[1] != snapshot.dim:
            raise ValueError(f"query has dimension {query.shape[1]}, index has {snapshot.dim}")
        if allowed_ids is not None:
            return snapshot.search_subset(query=query, k=k, allowed_ids=allowed_ids)
        return snapshot.search(query=query, k=k, ef_search=self.ef_search)

    def count(self, *, org_key: str) -> int:
        """Number of searchable vectors. Raises `IndexMissing` / `IndexCorrupt`."""
        return self._snapshot(org_key).live_count

    def info(self, *, org_key: str) -> IndexInfo:
        snapshot = self._snapshot(org_key)
        return IndexInfo(
            kind=snapshot.kind,
            count=snapshot.live_count,
            tombstones=snapshot.tombstone_count,
            dim=snapshot.dim,
            file_bytes=snapshot.nbytes,
            version=snapshot.version,
        )

    def version(self, *, org_key: str) -> int:
        """The version of the data the organization's file reflects. Raises `IndexMissing` /
        `IndexCorrupt`. Costs a `stat` when the file is loaded already."""
        return self._snapshot(org_key).version

    # Writes ----------------------------------------------------------------------------------

    def add(self, *, org_key: str, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Insert vectors under chunk ids, replacing any vector already stored under one of them.

        Replacing rather than refusing makes a retried ingestion task harmless. Creates the
        organization's index if it has none; raises `IndexCorrupt` if its file is damaged.
        """
        id_array, matrix = _validated_batch(ids, vectors)
        with self._write_lock(org_key):
            path = self._path(org_key)
            state = _read_state(path) if path.exists() else self._new_state(kind="exact", dim=matrix.shape[1])
            if matrix.shape[1] != state.dim:
                raise ValueError(f"vectors have dimension {matrix.shape[1]}, index has {state.dim}")
            _retire(state, id_array)
            state.index.add_with_ids(matrix, id_array)
            self._commit(org_key, self._rebalanced(state))

    def remove(self, *, org_key: str, ids: npt.ArrayLike) -> int:
        """Remove chunk ids from the index; returns how many were present.

        Raises `IndexMissing` / `IndexCorrupt`.
        """
        id_array = _validated_ids(ids)
        with self._write_lock(org_key):
            path = self._path(org_key)
            if not path.exists():
                raise IndexMissing(f"no index for organization {org_key!r}")
            state = _read_state(path)
            removed = _retire(state, id_array)
            if removed:
                self._commit(org_key, self._rebalanced(state))
            return removed

    def apply(
        self,
        *,
        org_key: str,
        base_version: int,
        version: int,
        add_ids: npt.ArrayLike,
        add_vectors: npt.ArrayLike,
        remove_ids: npt.ArrayLike,
    ) -> bool:
        """Move the file to `version` with the net changes made after `base_version`: the ids
        removed in between, and the ids added in between and still present.

        Those changes bring any file whose version lies in [base_version, version] to `version`
        (replaying what it already holds changes nothing). Returns False, changing nothing, when
        the file is older than `base_version` (the changes do not cover it: compute them again);
        a file already at or past `version` is left as it is. Raises `IndexMissing` /
        `IndexCorrupt`.
        """
        if version < base_version:
            raise ValueError("version must not be older than base_version")
        removed = _validated_ids(remove_ids)
        added = _validated_ids(add_ids)
        with self._write_lock(org_key):
            path = self._path(org_key)
            if not path.exists():
                raise IndexMissing(f"no index for organization {org_key!r}")
            state = _read_state(path)
            if state.version >= version:
                return True
            if state.version < base_version:
                return False
            if removed.size:
                _retire(state, removed)
            if added.size:
                added, matrix = _validated_batch(added, add_vectors)
                if matrix.shape[1] != state.dim:
                    raise ValueError(f"vectors have dimension {matrix.shape[1]}, index has {state.dim}")
                _retire(state, added)
                state.index.add_with_ids(matrix, added)
            state.version = version
            self._commit(org_key, self._rebalanced(state))
            return True

    def rebuild(self, *, org_key: str, ids: npt.ArrayLike, vectors: npt.ArrayLike, version: int = 0) -> None:
        """Replace the organization's index with exactly these vectors (from the database), read
        after `version` was: they reflect at least that version."""
        id_array, matrix = _validated_batch(ids, vectors)
        with self._write_lock(org_key):
            state = self._built(ids=id_array, vectors=matrix)
            state.version = version
            self._commit(org_key, state)

    def drop(self, *, org_key: str) -> None:
        """Delete the organization's index file; a no-op if there is none.

        The lock file stays: unlinking it could let a waiting writer lock a file that a newer
        writer has already replaced.
        """
        with self._write_lock(org_key):
            with contextlib.suppress(FileNotFoundError):
                self._path(org_key).unlink()
            _fsync_directory(self.root)
        with self._cache_lock:
            self._cache.pop(org_key, None)

    # Internals -------------------------------------------------------------------------------

    def _path(self, org_key: str) -> Path:
        if not _ORG_KEY.fullmatch(org_key):
            raise ValueError(f"invalid organization key {org_key!r}")
        return self.root / f"{org_key}.faiss"

    @contextlib.contextmanager
    def _write_lock(self, org_key: str) -> Iterator[None]:
        self._path(org_key)  # validates the key before it becomes a file name
        lock_path = self.root / f"{org_key}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock locks belong to the open file description, so two threads of one process
            # (each with its own descriptor) exclude each other just like two processes do.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._remove_orphan_temp_files(org_key)
            yield
        finally:
            os.close(fd)

    def _remove_orphan_temp_files(self, org_key: str) -> None:
        # Only a writer holding this organization's lock writes its temp files, so any found now
        # were left by a writer that crashed.
        for orphan in self.root.glob(f".{org_key}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                orphan.unlink()

    def _snapshot(self, org_key: str) -> _Snapshot:
        path = self._path(org_key)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            with self._cache_lock:
                self._cache.pop(org_key, None)
            raise IndexMissing(f"no index for organization {org_key!r}") from None
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._cached(org_key, key)
        if cached is not None:
            return cached
        with self._cache_lock:
            load_lock = self._load_locks.setdefault(org_key, threading.Lock())
        with load_lock:
            # Another thread may have loaded this very file while we waited.
            cached = self._cached(org_key, key)
            if cached is not None:
                return cached
            state, loaded_key, pin = _read_state_pinned(path)
            snapshot = _Snapshot(state=state, key=loaded_key, pin=pin)
            self._publish(org_key, snapshot)
            return snapshot

    def _cached(self, org_key: str, key: tuple[int, int, int]) -> _Snapshot | None:
        with self._cache_lock:
            snapshot = self._cache.get(org_key)
            if snapshot is None or snapshot.key != key:
                return None
            self._cache.move_to_end(org_key)
            return snapshot

    def _publish(self, org_key: str, snapshot: _Snapshot) -> None:
        with self._cache_lock:
            self._cache[org_key] = snapshot
            self._cache.move_to_end(org_key)
            total = sum(cached.nbytes for cached in self._cache.values())
            while total > self.cache_bytes and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                total -= evicted.nbytes

    def _commit(self, org_key: str, state: _State) -> None:
        path = self._path(org_key)
        _write_state(path, state)
        # Under the lock the new file cannot be replaced before it is opened here.
        pin = os.open(path, os.O_RDONLY)
        stat = os.fstat(pin)
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        # The state was private to this writer, so it can be shared from now on as-is.
        self._publish(org_key, _Snapshot(state=state, key=key, pin=pin))

    def _new_state(self, *, kind: IndexKind, dim: int) -> _State:
        inner: faiss.Index
        if kind == "exact":
            inner = faiss.IndexFlatIP(dim)
        else:
            graph = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.ef_construction
            graph.hnsw.efSearch = self.ef_search
            inner = graph
        return _State(
            kind=kind,
            dim=dim,
            # IndexIDMap2's reverse map holds one slot per id, so it cannot describe an id whose
            # old slot is tombstoned while a new one is live; the graph never needs that map.
            index=faiss.IndexIDMap2(inner) if kind == "exact" else faiss.IndexIDMap(inner),
            tombstones=np.zeros(0, dtype=np.int64),
        )

    def _built(self, *, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> _State:
        kind: IndexKind = "approximate" if len(ids) > self.approximate_threshold else "exact"
        state = self._new_state(kind=kind, dim=vectors.shape[1])
        if len(ids):
            state.index.add_with_ids(vectors, ids)
        return state

    def _rebalanced(self, state: _State) -> _State:
        """Rebuild when the exact index outgrew its threshold or tombstones piled up.

        The rebuild picks the kind for the live count, so an approximate index that shrank
        returns to exact at its next compaction.
        """
        outgrown = state.kind == "exact" and state.live_count > self.approximate_threshold
        cluttered = len(state.tombstones) > self.compact_ratio * state.slot_count
        return self._compacted(state) if outgrown or cluttered else state

    def _compacted(self, state: _State) -> _State:
        live = state.live_mask()
        vectors = faiss.downcast_index(state.index.index).reconstruct_n(0, state.slot_count)
        compacted = self._built(ids=state.ids[live], vectors=np.ascontiguousarray(vectors[live]))
        compacted.version = state.version
        return compacted


def _retire(state: _State, ids: npt.NDArray[np.int64]) -> int:
    """Make the live vector stored under each of `ids` unsearchable; returns how many there were.

    The exact index deletes them; the graph cannot, so their slots become tombstones.
    """
    if state.kind == "exact":
        return int(state.index.remove_ids(faiss.IDSelectorBatch(ids)))
    slots = np.flatnonzero(np.isin(state.ids, ids) & state.live_mask())
    state.tombstones = np.union1d(state.tombstones, slots)
    return len(slots)


def _validated_ids(ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError("ids must be one-dimensional")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError("ids must be integers")
    id_array = array.astype(np.int64)
    if len(np.unique(id_array)) != len(id_array):
        raise ValueError("ids must be unique")
    return id_array


def _validated_batch(
    ids: npt.ArrayLike, vectors: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    id_array = _validated_ids(ids)
    matrix = _normalized(vectors, what="vectors")
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError("vectors must be a 2-D array of shape (n, dim)")
    if matrix.shape[0] != len(id_array):
        raise ValueError(f"{len(id_array)} ids but {matrix.shape[0]} vectors")
    return id_array, matrix


def _normalized(values: npt.ArrayLike, *, what: str) -> npt.NDArray[np.float32]:
    """A float32 C-contiguous copy scaled to unit length, so inner product is cosine."""
    matrix = np.array(values, dtype=np.float32, order="C", copy=True)
    if matrix.size == 0:
        return matrix
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} contain NaN or infinity")
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} contain a zero vector, which has no direction")
    matrix /= norms
    return matrix


def _write_state(path: Path, state: _State) -> None:
    """Write atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    index_bytes = faiss.serialize_index(state.index).data
    tombstone_bytes = state.tombstones.astype("<i8").tobytes()
    checksum = zlib.crc32(index_bytes, zlib.crc32(tombstone_bytes))
    header = json.dumps(
        {
            "format": _FORMAT_VERSION,
            "kind": state.kind,
            "dim": state.dim,
            "version": state.version,
            "tombstones": len(state.tombstones),
            "index_bytes": len(index_bytes),
            "crc32": f"{checksum:08x}",
        }
    ).encode("utf-8")
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_MAGIC)
            handle.write(_HEADER_LENGTH.pack(len(header)))
            handle.write(header)
            handle.write(tombstone_bytes)
            handle.write(index_bytes)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(path.parent)


def _read_state(path: Path) -> _State:
    state, _, pin = _read_state_pinned(path)
    os.close(pin)
    return state


def _read_state_pinned(path: Path) -> tuple[_State, tuple[int, int, int], int]:
    """The parsed file, its cache key, and the still-open descriptor it was read through."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise IndexMissing(f"no index file at {path}") from None
    try:
        stat = os.fstat(fd)
        buffer = np.empty(stat.st_size, dtype=np.uint8)
        view = buffer.data
        filled = 0
        while filled < stat.st_size:
            read = os.readv(fd, [view[filled:]])
            if not read:
                break
            filled += read
        state = _parse(buffer[:filled], path=path)
    except BaseException:
        os.close(fd)
        raise
    return state, (stat.st_mtime_ns, stat.st_size, stat.st_ino), fd


def _parse(buffer: npt.NDArray[np.uint8], *, path: Path) -> _State:
    prefix = len(_MAGIC) + _HEADER_LENGTH.size
    if len(buffer) < prefix or buffer[: len(_MAGIC)].tobytes() != _MAGIC:
        raise IndexCorrupt(f"{path} is not an index file (bad magic)")
    (header_length,) = _HEADER_LENGTH.unpack(buffer[len(_MAGIC) : prefix].tobytes())
    try:
        header = json.loads(buffer[prefix : prefix + header_length].tobytes())
        kind = header["kind"]
        dim = int(header["dim"])
        version = int(header["version"])
        tombstone_count = int(header["tombstones"])
        index_length = int(header["index_bytes"])
        checksum = int(header["crc32"], 16)
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexCorrupt(f"{path} has an unreadable header: {exc}") from exc
    if header.get("format") != _FORMAT_VERSION or kind not in ("exact", "approximate"):
        raise IndexCorrupt(f"{path} has an unknown format or kind")
    body_start = prefix + header_length
    index_start = body_start + 8 * tombstone_count
    if len(buffer) != index_start + index_length:
        raise IndexCorrupt(f"{path} is {len(buffer)} bytes, its header promises another size")
    tombstone_bytes = buffer[body_start:index_start]
    index_bytes = buffer[index_start:]
    if zlib.crc32(index_bytes.data, zlib.crc32(tombstone_bytes.data)) != checksum:
        raise IndexCorrupt(f"{path} fails its checksum")
    try:
        index = faiss.deserialize_index(index_bytes)
    except RuntimeError as exc:
        raise IndexCorrupt(f"{path} holds an unreadable FAISS index: {exc}") from exc
    expected_map = faiss.IndexIDMap2 if kind == "exact" else faiss.IndexIDMap
    expected_inner = faiss.IndexFlatIP if kind == "exact" else faiss.IndexHNSWFlat
    if not isinstance(index, expected_map):
        raise IndexCorrupt(f"{path} holds a FAISS index of an unexpected type")
    tombstones = tombstone_bytes.view("<i8").astype(np.int64)
    if (
        not isinstance(faiss.downcast_index(index.index), expected_inner)
        or index.d != dim
        or index.metric_type != faiss.METRIC_INNER_PRODUCT
        or index.id_map.size() != index.ntotal
    ):
        raise IndexCorrupt(f"{path} holds a FAISS index of an unexpected shape")
    if tombstones.size and (
        kind == "exact"
        or np.any(np.diff(tombstones) <= 0)
        or tombstones[0] < 0
        or tombstones[-1] >= index.ntotal
    ):
        raise IndexCorrupt(f"{path} lists tombstones that are not slots of its index")
    return _State(kind=kind, dim=dim, index=index, tombstones=tombstones, version=version)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
