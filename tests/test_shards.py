"""The shard-lineage rule: a child is read only after its parents are fully read."""

import itertools

import pytest

from changeflow.io.shards import (
    Shard, ShardGraph, ShardPosition, sequence_key, shard_from_description, split_positions)


def desc(shard_id, parent=None, adjacent=None, start='100', end=None):
    d = {'ShardId': shard_id, 'HashKeyRange': {'StartingHashKey': '0', 'EndingHashKey': '9'},
         'SequenceNumberRange': {'StartingSequenceNumber': start}}
    if parent:
        d['ParentShardId'] = parent
    if adjacent:
        d['AdjacentParentShardId'] = adjacent
    if end:
        d['SequenceNumberRange']['EndingSequenceNumber'] = end
    return d


def graph(*descriptions):
    return ShardGraph.from_descriptions(descriptions)


def test_description_of_kinesis_and_dynamodb_shards():
    merged = shard_from_description(desc('s3', 's1', 's2', start='300', end='399'))
    assert merged == Shard('s3', ('s1', 's2'), '300', '399') and merged.closed
    # DynamoDB Streams: no AdjacentParentShardId, open shards have no ending number.
    dynamo = shard_from_description({'ShardId': 'shardId-0001-ab', 'ParentShardId': 'shardId-0000-cd',
                                     'SequenceNumberRange': {'StartingSequenceNumber': '7'}})
    assert dynamo == Shard('shardId-0001-ab', ('shardId-0000-cd',), '7', None)
    assert not dynamo.closed


def test_sequence_numbers_compare_as_integers():
    assert sequence_key('9') < sequence_key('10')
    big = '49680742114452818571751649052949190868806650014178738178'
    assert sequence_key(big) < sequence_key(big[:-1] + '9')
    # '9' > '10' as text: a closed shard at ending '10' read to '9' is not finished.
    g = graph(desc('a', start='1', end='10'))
    assert not g.is_finished('a', set(), {'a': '9'})
    assert g.is_finished('a', set(), {'a': '10'})


def test_open_stream_reads_every_root():
    g = graph(desc('a'), desc('b'))
    assert g.readable(set(), {}) == ('a', 'b')
    assert g.readable({'a'}, {}) == ('b',)


def test_split_children_wait_for_the_parent():
    g = graph(desc('p', end='199'), desc('c1', 'p'), desc('c2', 'p'))
    assert g.children('p') == ('c1', 'c2')
    assert g.readable(set(), {}) == ('p',)
    # Read part way: still only the parent.
    assert g.readable(set(), {'p': '150'}) == ('p',)
    assert g.readable({'p'}, {'p': '150'}) == ('c1', 'c2')


def test_merge_child_waits_for_both_parents():
    g = graph(desc('a', end='199'), desc('b', end='299'), desc('m', 'a', 'b'))
    assert g.readable(set(), {}) == ('a', 'b')
    assert g.readable({'a'}, {}) == ('b',)
    assert g.readable({'b'}, {}) == ('a',)
    assert g.readable({'a', 'b'}, {}) == ('m',)


def test_split_of_a_child_then_merge_of_grandchildren():
    g = graph(desc('r', end='1'), desc('c1', 'r', end='2'), desc('c2', 'r'),
              desc('g1', 'c1', end='3'), desc('g2', 'c1', end='4'), desc('m', 'g1', 'g2'))
    steps = []
    finished = set()
    while True:
        now = g.readable(finished, {})
        if not now:
            break
        steps.append(now)
        finished.update(s for s in now if g.shards[s].closed)
        if all(not g.shards[s].closed for s in now):
            break
    assert steps == [('r',), ('c1', 'c2'), ('c2', 'g1', 'g2'), ('c2', 'm')]


def test_every_order_of_finishing_respects_lineage():
    """Whatever order the reader finishes readable shards in, no shard is
    offered before all its parents are finished."""
    g = graph(desc('r', end='1'), desc('c1', 'r', end='2'), desc('c2', 'r', end='3'),
              desc('g1', 'c1', end='4'), desc('g2', 'c1', end='5'), desc('m', 'g2', 'c2'))
    for order in itertools.permutations(['r', 'c1', 'c2', 'g1', 'g2', 'm']):
        finished = set()
        for shard_id in order:
            if shard_id not in g.readable(finished, {}):
                break
            assert all(p in finished for p in g.shards[shard_id].parents)
            finished.add(shard_id)
        else:
            assert order.index('m') > max(order.index('g2'), order.index('c2'))


def test_finished_by_reading_to_the_ending_sequence():
    g = graph(desc('p', end='199'), desc('c', 'p'))
    assert g.readable(set(), {'p': '199'}) == ('c',)


def test_expired_parent_makes_its_children_readable():
    # Retention dropped 'old' (the parent of 'a') and both parents of the merge 'm'.
    g = graph(desc('a', 'old', end='500'), desc('m', 'x', 'y'), desc('b', 'a'))
    assert g.readable(set(), {}) == ('a', 'm')
    assert g.lost(set(), {}) == ()


def test_a_half_read_shard_gone_from_the_listing_is_lost_not_skipped():
    g = graph(desc('c', 'p'))
    assert g.readable(set(), {'p': '150'}) == ('c',)
    assert g.lost(set(), {'p': '150', 'c': '160'}) == ('p',)
    assert g.lost({'p'}, {'p': '150'}) == ()     # finished before it expired: nothing lost
    assert g.lost(set(), {'q': None}) == ()      # never read: nothing known to be lost


def test_relisting_adds_children_while_reading():
    first = graph(desc('a'), desc('b'))
    finished, positions = set(), {'a': '120', 'b': '130'}
    assert first.readable(finished, positions) == ('a', 'b')
    # 'a' splits while being read: the new listing closes it and adds children.
    second = graph(desc('a', end='199'), desc('b'), desc('a1', 'a'), desc('a2', 'a'))
    assert second.readable(finished, positions) == ('a', 'b')
    finished.add('a')
    assert second.readable(finished, positions) == ('a1', 'a2', 'b')
    # Then 'b' and 'a2' merge.
    third = graph(desc('a', end='199'), desc('b', end='299'), desc('a1', 'a'),
                  desc('a2', 'a', end='250'), desc('m', 'a2', 'b'))
    assert third.readable(finished, positions) == ('a1', 'a2', 'b')
    assert third.readable(finished | {'b'}, positions) == ('a1', 'a2')
    assert third.readable(finished | {'b', 'a2'}, positions) == ('a1', 'm')


def test_split_positions():
    positions = {'a': ShardPosition('5', True, ()), 'b': ShardPosition('7'), 'c': ShardPosition()}
    finished, sequences = split_positions(positions)
    assert finished == {'a'}
    assert sequences == {'a': '5', 'b': '7'}


@pytest.mark.parametrize('parents', [('p',), ('p', 'q')])
def test_child_with_an_unfinished_known_parent_is_never_readable(parents):
    g = graph(*(desc(p, end='9') for p in parents), desc('c', *parents))
    assert 'c' not in g.readable(set(), {'c': '50'})
