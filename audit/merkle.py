"""RFC 6962 / RFC 9162 Merkle tree hashing, incremental appends, proofs and their verifiers.

Owns the tree arithmetic of the audit log and nothing else: the leaf and node hashes with
their domain-separation prefixes (RFC 9162 section 2.1.1), the Merkle Tree Hash of a list of
leaf hashes, the :class:`Frontier` (compact range) a sequencer keeps to append leaves and learn
which nodes to store, inclusion and consistency proof construction over any node store
(RFC 9162 sections 2.1.3.1 and 2.1.4.1), the pure verifiers (sections 2.1.3.2 and 2.1.4.2), and
:class:`MemoryTree`, an in-memory node store for tests and offline verification.

Must not do: I/O, storage, signing, or event encoding (other ``audit`` modules own those); it
must import neither ``sovereign`` nor Flask, only the standard library. Proof generation reads
nodes through a :data:`NodeGetter`, so a database-backed store plugs in without this module
knowing about it. Verifiers never trust the prover: they recompute and raise
:class:`ProofError` (with the expected and the computed hash where hashes differ).

Node addressing: ``(level, index)`` is the root of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 holds the leaf hashes themselves.

Hot loops bind ``hashlib.sha256`` and the prefix to locals and hash whole tree levels with list
comprehensions, because rebuilding a large tree must run near the raw speed of SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ConsistencyProofError",
    "Frontier",
    "InclusionProofError",
    "MemoryTree",
    "Node",
    "NodeGetter",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

#: Size in bytes of every hash in the tree (SHA-256).
HASH_SIZE = 32

# RFC 9162 section 2.1.1: distinct prefixes for leaves and interior nodes, so that a leaf can
# never be passed off as an interior node (second-preimage resistance).
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

#: MTH({}) = SHA-256() per RFC 9162 section 2.1.1: the root of the empty tree.
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: Returns the hash of node ``(level, index)``; level 0 is a leaf hash.
NodeGetter = Callable[[int, int], bytes]

#: A completed perfect-subtree node: ``(level, index, hash)``.
Node = tuple[int, int, bytes]


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def leaf_hashes(entries: Iterable[bytes]) -> list[bytes]:
    """Return the leaf hash of every entry, in order (a tight loop for rebuilding whole trees)."""
    sha256 = hashlib.sha256
    prefix = _LEAF_PREFIX
    return [sha256(prefix + entry).digest() for entry in entries]


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Return the largest power of two strictly below ``n`` (RFC 9162's k), for ``n >= 2``."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hashes(hashes: Iterable[bytes], what: str) -> None:
    """Raise ValueError unless every element is a ``HASH_SIZE``-byte ``bytes``."""
    # map(len, ...) runs in C, so this check costs little next to hashing.
    lengths = set(map(len, hashes))
    if lengths - {HASH_SIZE}:
        raise ValueError(f"{what} must be {HASH_SIZE}-byte hashes, got lengths {sorted(lengths)}")


def _hash_pairs(level: Sequence[bytes]) -> list[bytes]:
    """Return the parents of consecutive pairs in ``level`` (a trailing odd node is dropped)."""
    sha256 = hashlib.sha256
    prefix = _NODE_PREFIX
    pairs = iter(level)
    return [sha256(prefix + a + b).digest() for a, b in zip(pairs, pairs, strict=False)]


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash of ``hashes`` (RFC 9162 section 2.1.1), iteratively in O(n).

    :raises ValueError: if an element is not a ``HASH_SIZE``-byte hash.
    """
    _check_hashes(hashes, "leaf hashes")
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # Hashing level by level and carrying a lone last node up unchanged gives exactly the
    # RFC tree: its left subtrees are perfect and only the right edge is ragged.
    while len(level) > 1:
        carry = level[-1] if len(level) & 1 else None
        level = _hash_pairs(level)
        if carry is not None:
            level.append(carry)
    return level[0]


class Frontier:
    """The compact range ``[0, size)``: roots of the perfect subtrees that make up the tree.

    There is one hash per set bit of ``size``, largest subtree first, which is all a sequencer
    needs to append leaves, emit the nodes to store, and compute the root.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Restore the frontier of a tree of ``size`` leaves from its subtree roots.

        :raises ValueError: if ``size`` is negative, the number of hashes is not the number of
            set bits of ``size``, or a hash is not ``HASH_SIZE`` bytes.
        """
        if size < 0:
            raise ValueError(f"tree size must be non-negative, got {size}")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} frontier hashes, got {len(hashes)}"
            )
        _check_hashes(hashes, "frontier hashes")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @classmethod
    def from_nodes(cls, size: int, get: NodeGetter) -> Frontier:
        """Build the frontier of a tree of ``size`` leaves from stored nodes, with O(log n) reads.

        :raises ValueError: if ``size`` is negative or ``get`` returns a malformed hash.
        """
        if size < 0:
            raise ValueError(f"tree size must be non-negative, got {size}")
        hashes = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                hashes.append(get(level, start >> level))
                start += 1 << level
        return cls(size, hashes)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees, largest (leftmost) first."""
        return tuple(self._hashes)

    def __repr__(self) -> str:
        """Show the size and the hashes in hex."""
        return f"Frontier(size={self._size}, hashes={[h.hex() for h in self._hashes]})"

    def append(self, leaf: bytes) -> list[Node]:
        """Append one leaf hash and return the nodes (level >= 1) it completes, bottom up.

        :raises ValueError: if ``leaf`` is not a ``HASH_SIZE``-byte hash.
        """
        return self.extend((leaf,))

    def extend(self, leaves: Iterable[bytes], *, emit: bool = True) -> list[Node]:
        """Append leaf hashes and return every node (level >= 1) they complete.

        Each completed node comes exactly once and after both its children, though not in the
        order single appends would give. With ``emit=False`` nothing is collected (faster
        when only the root matters) and the result is empty.

        :raises ValueError: if a leaf is not a ``HASH_SIZE``-byte hash; then nothing is appended.
        """
        batch = leaves if isinstance(leaves, list | tuple) else list(leaves)
        _check_hashes(batch, "leaf hashes")
        sha256 = hashlib.sha256
        prefix = _NODE_PREFIX
        stack = self._hashes
        size = self._size
        out: list[Node] = []
        pos = 0
        total = len(batch)
        while pos < total:
            # The largest block of 2**k leaves that fits in what is left and starts at a multiple
            # of 2**k: its perfect subtree is hashed level by level (fast), then merged into the
            # frontier like one appended node of level k. O(log n) blocks per call.
            k = (total - pos).bit_length() - 1
            if size:
                k = min(k, (size & -size).bit_length() - 1)
            width = 1 << k
            level: Sequence[bytes] = batch[pos : pos + width]
            for lvl in range(1, k + 1):
                level = _hash_pairs(level)
                if emit:
                    first = size >> lvl
                    out.extend(zip(repeat(lvl), range(first, first + len(level)), level))
            node = level[0]
            new_size = size + width
            lvl = k
            carry = size >> k
            while carry & 1:
                node = sha256(prefix + stack.pop() + node).digest()
                carry >>= 1
                lvl += 1
                if emit:
                    out.append((lvl, (new_size >> lvl) - 1, node))
            stack.append(bytes(node))
            size = new_size
            pos += width
        self._size = size
        return out

    def join(self, size: int, hashes: Sequence[bytes]) -> None:
        """Append ``size`` leaves given by their compact range, computed over them alone.

        This joins trees hashed apart (in other processes, say) into one. The joined range must
        be aligned: the current size must be a multiple of the largest power of two in ``size``,
        as it is for the chunks ``[i * 2**k, i * 2**k + n)``, ``n <= 2**k``, of one log.

        :raises ValueError: if ``hashes`` are not the frontier hashes of ``size`` leaves or the
            range is not aligned; then nothing is appended.
        """
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(
                f"a range of {size} leaves has {size.bit_count()} hashes, not {len(hashes)}"
            )
        _check_hashes(hashes, "frontier hashes")
        if size and self._size % (1 << (size.bit_length() - 1)):
            raise ValueError(f"a range of {size} leaves cannot start at {self._size}: not aligned")
        sha256 = hashlib.sha256
        prefix = _NODE_PREFIX
        stack = self._hashes
        levels = [lvl for lvl in range(size.bit_length() - 1, -1, -1) if size >> lvl & 1]
        for lvl, subtree in zip(levels, hashes, strict=True):
            # Merge with equal-sized subtrees on the frontier, as an append of that node would.
            node = bytes(subtree)
            carry = self._size >> lvl
            while carry & 1:
                node = sha256(prefix + stack.pop() + node).digest()
                carry >>= 1
            stack.append(node)
            self._size += 1 << lvl

    def root(self) -> bytes:
        """Return the Merkle Tree Hash of the current tree (``EMPTY_ROOT`` when empty)."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        root = hashes[-1]
        for h in reversed(hashes[:-1]):
            root = node_hash(h, root)
        return root


def _perfect_hash(start: int, level: int, get: NodeGetter) -> bytes:
    """Return the hash of the perfect subtree of ``2**level`` leaves starting at ``start``."""
    if start & ((1 << level) - 1) == 0:
        return get(level, start >> level)
    # Not aligned, so not a stored node: combine its halves (only for unaligned ranges).
    half = 1 << (level - 1)
    return node_hash(
        _perfect_hash(start, level - 1, get), _perfect_hash(start + half, level - 1, get)
    )


def subtree_hash(start: int, end: int, get: NodeGetter) -> bytes:
    """Return MTH of leaves ``[start, end)``, reading perfect aligned subtrees through ``get``.

    When ``start`` is a multiple of the smallest power of two >= ``end - start`` (true of every
    range a proof needs) this makes one ``get`` call per set bit of ``end - start``.

    :raises ValueError: if ``start`` is negative or ``end < start``.
    """
    if start < 0 or end < start:
        raise ValueError(f"invalid leaf range [{start}, {end})")
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    # MTH of n leaves = right fold of its perfect blocks, one per set bit of n, largest first.
    pieces = []
    pos = start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            pieces.append(_perfect_hash(pos, level, get))
            pos += 1 << level
    root = pieces[-1]
    for h in reversed(pieces[:-1]):
        root = node_hash(h, root)
    return root


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """Return the audit path PATH(index, D[size]) of RFC 9162 section 2.1.3.1, deepest first.

    :raises ValueError: unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    path = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree_hash(lo + k, hi, get))
            hi = lo + k
        else:
            # [lo, lo + k) is perfect and aligned: lo only ever grew by larger powers of two.
            path.append(get(k.bit_length() - 1, lo // k))
            lo += k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, get: NodeGetter) -> list[bytes]:
    """Return PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1 (empty if trivial).

    :raises ValueError: unless ``0 <= old_size <= new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"cannot prove tree size {old_size} consistent with size {new_size}")
    if old_size in (0, new_size):
        return []
    proof = []
    lo, hi = 0, new_size
    # SUBPROOF's flag b: still true while the old tree is the left edge of the current range.
    whole_old_tree = True
    while old_size < hi:
        k = _split(hi - lo)
        if old_size <= lo + k:
            proof.append(subtree_hash(lo + k, hi, get))
            hi = lo + k
        else:
            proof.append(get(k.bit_length() - 1, lo // k))
            lo += k
            whole_old_tree = False
    if not whole_old_tree:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}: [lo, hi) was reached going left, so perfect.
        proof.append(get((hi - lo).bit_length() - 1, lo // (hi - lo)))
    proof.reverse()
    return proof


class MemoryTree:
    """All leaf hashes and completed nodes in per-level lists: a node store for tests and tools.

    Nodes are computed here pairwise per level, independently of :class:`Frontier`.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        """Start a tree holding the leaf hashes ``leaves``.

        :raises ValueError: if a leaf is not a ``HASH_SIZE``-byte hash.
        """
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaves)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash.

        :raises ValueError: if ``leaf`` is not a ``HASH_SIZE``-byte hash.
        """
        self.extend((leaf,))

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append leaf hashes and compute every node they complete.

        :raises ValueError: if a leaf is not a ``HASH_SIZE``-byte hash; then nothing is appended.
        """
        batch = [bytes(leaf) for leaf in leaves]
        _check_hashes(batch, "leaf hashes")
        levels = self._levels
        levels[0].extend(batch)
        level = 0
        while len(levels[level]) >= 2:
            if level + 1 == len(levels):
                levels.append([])
            below, above = levels[level], levels[level + 1]
            for i in range(len(above), len(below) // 2):
                above.append(node_hash(below[2 * i], below[2 * i + 1]))
            level += 1

    def get(self, level: int, index: int) -> bytes:
        """Return node ``(level, index)``; level 0 is a leaf hash.

        :raises ValueError: if that node is not complete in this tree.
        """
        levels = self._levels
        if not (0 <= level < len(levels) and 0 <= index < len(levels[level])):
            raise ValueError(f"node ({level}, {index}) is not in a tree of size {self.size}")
        return levels[level][index]

    def _size_or_current(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is outside 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """Return the Merkle Tree Hash of the first ``size`` leaves (default: all).

        :raises ValueError: if ``size`` is negative or larger than the tree.
        """
        return subtree_hash(0, self._size_or_current(size), self.get)

    def frontier(self, size: int | None = None) -> Frontier:
        """Return the :class:`Frontier` of the first ``size`` leaves (default: all).

        :raises ValueError: if ``size`` is negative or larger than the tree.
        """
        return Frontier.from_nodes(self._size_or_current(size), self.get)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the inclusion proof of leaf ``index`` in the tree of ``size`` leaves.

        :raises ValueError: unless ``0 <= index < size <= self.size``.
        """
        return inclusion_proof(index, self._size_or_current(size), self.get)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the consistency proof from ``old_size`` to ``new_size`` leaves (default: all).

        :raises ValueError: unless ``0 <= old_size <= new_size <= self.size``.
        """
        return consistency_proof(old_size, self._size_or_current(new_size), self.get)


class ProofError(Exception):
    """A proof, or the sizes and hashes given with it, did not verify."""


class InclusionProofError(ProofError):
    """An inclusion proof leads to a root other than the expected one."""

    def __init__(self, message: str, *, expected: bytes, computed: bytes) -> None:
        """Record what the verifier expected and what it computed."""
        super().__init__(f"{message}: expected {expected.hex()}, computed {computed.hex()}")
        self.expected = expected
        self.computed = computed


class ConsistencyProofError(ProofError):
    """A consistency proof leads to an old or new root other than the expected one."""

    def __init__(self, message: str, *, expected: bytes, computed: bytes) -> None:
        """Record what the verifier expected and what it computed."""
        super().__init__(f"{message}: expected {expected.hex()}, computed {computed.hex()}")
        self.expected = expected
        self.computed = computed


def _require_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _require_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"proof hash {i} must be {HASH_SIZE} bytes, got {len(h)}")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Return the root that ``proof`` yields for leaf hash ``leaf`` at ``index`` (RFC 9162 2.1.3.2).

    :raises ProofError: if ``index``/``size`` are out of range, a hash is not ``HASH_SIZE``
        bytes, or the proof has the wrong number of hashes for ``index`` and ``size``.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _require_hash(leaf, "leaf hash")
    _require_proof_hashes(proof)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof for leaf {index} of {size} has too many hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Skip the levels where this node is a lone right-edge node carried up unchanged.
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof for leaf {index} of {size} has too few hashes")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash ``leaf`` is at ``index`` in the tree of ``size`` leaves with ``root``.

    :raises ProofError: if the arguments or the proof are malformed (see
        :func:`root_from_inclusion_proof`).
    :raises InclusionProofError: if the proof leads to a different root.
    """
    _require_hash(root, "root")
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    if computed != root:
        raise InclusionProofError(
            f"inclusion proof for leaf {index} in tree of size {size} does not reach the root",
            expected=root,
            computed=computed,
        )


def _check_trivial_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Verify the cases with no proof hashes: an empty old tree, or equal sizes."""
    if proof:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} must be empty,"
            f" got {len(proof)} hashes"
        )
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise ConsistencyProofError(
            "old root of the empty tree", expected=EMPTY_ROOT, computed=old_root
        )
    if old_size == new_size and new_root != old_root:
        raise ConsistencyProofError(
            f"trees of equal size {new_size} have different roots",
            expected=old_root,
            computed=new_root,
        )


def _roots_from_consistency_proof(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """Return the old and new roots ``proof`` yields, for ``0 < old_size < new_size``."""
    if not proof:
        raise ProofError(f"consistency proof from size {old_size} to {new_size} is empty")
    hashes = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect left subtree of the new one: the proof leaves its root out.
        hashes.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size} has too many hashes"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from size {old_size} to {new_size} has too few hashes")
    return fr, sr


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` leaves with ``new_root`` extends the one of ``old_size``.

    Follows RFC 9162 section 2.1.4.2; in addition the root of a size-0 tree must be
    ``EMPTY_ROOT``, and equal sizes need equal roots and an empty proof.

    :raises ProofError: if the sizes are out of order or negative, a hash is not
        ``HASH_SIZE`` bytes, or the proof has the wrong number of hashes.
    :raises ConsistencyProofError: if the proof leads to a different old or new root.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"tree size {old_size} cannot precede tree size {new_size}")
    _require_hash(old_root, "old root")
    _require_hash(new_root, "new root")
    _require_proof_hashes(proof)
    if old_size in (0, new_size):
        _check_trivial_consistency(old_size, new_size, old_root, new_root, proof)
        return
    fr, sr = _roots_from_consistency_proof(old_size, new_size, old_root, proof)
    if fr != old_root:
        raise ConsistencyProofError(
            f"consistency proof from size {old_size} to {new_size} does not reach the old root",
            expected=old_root,
            computed=fr,
        )
    if sr != new_root:
        raise ConsistencyProofError(
            f"consistency proof from size {old_size} to {new_size} does not reach the new root",
            expected=new_root,
            computed=sr,
        )
