"""Shard lineage shared by the stream readers (Kinesis, DynamoDB Streams).

Both services reshard the same way: a shard closes at an ending sequence
number and its keys move to children; a split gives one parent two children,
a merge gives one child two parents (``ParentShardId`` and
``AdjacentParentShardId``). A key's records are in order within a shard, and
its later records are in a child, so **a child is read only after every
parent is fully read**; that one rule keeps each key's records in order across
resharding. A shard that is closed and read to its end is finished.

This module is service-independent and side-effect free: a ShardGraph built
from a shard listing (Kinesis ``ListShards``, DynamoDB Streams
``DescribeStream``; both describe shards the same way), per-shard positions,
and the rule that says which shards to read now. Sequence numbers are decimal
strings of up to 128 digits; they are compared as integers.

A parent that no longer appears in the listing has expired from the stream's
retention: nothing of it can be read, so its children are readable. If a
checkpoint still held an unfinished position on it, its unread records are
gone: :meth:`ShardGraph.lost` names such shards so the reader reports them as
data loss instead of skipping them silently.
"""

from typing import AbstractSet, Iterable, Mapping, NamedTuple, Optional, Tuple

__all__ = ['Shard', 'ShardPosition', 'ShardGraph', 'shard_from_description', 'sequence_key',
           'split_positions']


def sequence_key(sequence: str) -> int:
    """A sequence number as an int, the order both services define."""
    return int(sequence)


class Shard(NamedTuple):
    """One shard as a listing describes it."""
    shard_id: str
    parents: Tuple[str, ...]          # (parent,) after a split, (parent, adjacent) after a merge
    starting_sequence: str
    ending_sequence: Optional[str]    # None while the shard is open

    @property
    def closed(self) -> bool:
        return self.ending_sequence is not None


class ShardPosition(NamedTuple):
    """How far one shard has been read: what a checkpoint keeps per shard.

    ``parents`` is the shard's lineage, kept so a restart after resharding
    knows the order even when the listing no longer shows the parents.
    """
    sequence: Optional[str] = None    # last sequence number read; None before the first record
    finished: bool = False            # closed and read to its end
    parents: Tuple[str, ...] = ()


def shard_from_description(description: Mapping) -> Shard:
    """A Shard from a Kinesis ``ListShards`` or DynamoDB ``DescribeStream`` entry."""
    parents = tuple(p for p in (description.get('ParentShardId'),
                                description.get('AdjacentParentShardId')) if p)
    sequences = description.get('SequenceNumberRange') or {}
    return Shard(description['ShardId'], parents,
                 sequences.get('StartingSequenceNumber') or '0',
                 sequences.get('EndingSequenceNumber'))


class ShardGraph:
    """The shards of one listing and their lineage.

    A new listing (re-listing while reading) gives a new graph: it holds the
    shards created since, and no longer the ones that expired.
    """

    def __init__(self, shards: Iterable[Shard]):
        self.shards = {s.shard_id: s for s in shards}

    @classmethod
    def from_descriptions(cls, descriptions: Iterable[Mapping]) -> 'ShardGraph':
        return cls(shard_from_description(d) for d in descriptions)

    def __contains__(self, shard_id) -> bool:
        return shard_id in self.shards

    def __len__(self) -> int:
        return len(self.shards)

    def children(self, shard_id: str) -> Tuple[str, ...]:
        return tuple(sorted(s.shard_id for s in self.shards.values() if shard_id in s.parents))

    def is_finished(self, shard_id: str, finished: AbstractSet[str],
                    positions: Mapping[str, Optional[str]]) -> bool:
        """Finished: marked so by the reader, or read up to its ending sequence number."""
        if shard_id in finished:
            return True
        shard = self.shards.get(shard_id)
        sequence = positions.get(shard_id)
        return bool(shard and shard.closed and sequence is not None
                    and sequence_key(sequence) >= sequence_key(shard.ending_sequence))

    def readable(self, finished: AbstractSet[str],
                 positions: Mapping[str, Optional[str]]) -> Tuple[str, ...]:
        """The shards to read now, sorted: not finished, and every parent
        finished or expired (absent from the listing).

        ``finished``: ids of shards read to their end; ``positions``: shard id
        -> last sequence number read (shards not read yet may be absent).
        """
        def done(parent):
            return parent not in self.shards or self.is_finished(parent, finished, positions)

        return tuple(sorted(
            shard_id for shard_id, shard in self.shards.items()
            if not self.is_finished(shard_id, finished, positions)
            and all(done(p) for p in shard.parents)))

    def lost(self, finished: AbstractSet[str],
             positions: Mapping[str, Optional[str]]) -> Tuple[str, ...]:
        """Shards read part way (a position, not finished) that the listing no
        longer holds: their remaining records expired unread."""
        return tuple(sorted(
            shard_id for shard_id, sequence in positions.items()
            if sequence is not None and shard_id not in finished and shard_id not in self.shards))


def split_positions(positions: Mapping[str, ShardPosition]):
    """(finished ids, shard id -> last sequence) from checkpoint positions."""
    finished = frozenset(sid for sid, p in positions.items() if p.finished)
    sequences = {sid: p.sequence for sid, p in positions.items() if p.sequence is not None}
    return finished, sequences
