"""A pure-Python (boto3) DynamoDB Streams reader on the Kinesis reader's shard-lineage core.

Nothing in Beam reads DynamoDB Streams. The service describes and reshards
its shards as Kinesis does (a table partition's shard closes, children
continue it; shards also roll over every few hours without a split), so
:class:`DynamoDBStreamReader` is a :class:`~changeflow.io.kinesis.KinesisShardReader`
with DynamoDB's calls: the catch-up loop, parents before children, throttling
backoff per shard and expired-iterator renewal are the Kinesis reader's.

What differs, and how it is handled:

* Shards are listed with ``DescribeStream``, paged by ``ExclusiveStartShardId``
  / ``LastEvaluatedShardId``; its rate limit (``LimitExceededException``) is
  backed off like every control-plane call.
* ``GetRecords`` returns at most 1,000 records (``limit``); iterators expire
  after 15 minutes and are renewed ``AFTER_SEQUENCE_NUMBER`` the last record.
* There is no ``MillisBehindLatest``: an open shard is caught up when a
  ``GetRecords`` returns no records (``lag`` stays None). A closed shard ends
  with ``NextShardIterator`` null, as in Kinesis.
* Retention is 24 hours. A checkpoint whose position is older than the trim
  horizon (``TrimmedDataAccessException``) raises :class:`TrimmedData`,
  naming the shard and the sequence number: records were lost unread. It is
  never skipped silently; a shard that expired altogether raises
  :class:`~changeflow.io.kinesis.ShardsLost`.
* There is no ``AT_TIMESTAMP`` iterator. ``Start('at_timestamp', ms)`` (what
  ``Start('latest').resolved(now)`` gives, to keep "latest" across cycles)
  reads from ``TRIM_HORIZON`` and drops records created before that second.
* The stream is given by ARN, or found from the table: ``DescribeTable``'s
  ``LatestStreamArn`` (:func:`latest_stream_arn`).

Each record becomes a :class:`~changeflow.model.SourceRecord` whose ``data``
is the record as JSON in the Lambda event shape (``eventSourceARN`` added,
``B`` values base64, ``ApproximateCreationDateTime`` epoch seconds), the
same bytes a ``dynamodb-jsonl`` archive holds, so one decoder
(:func:`changeflow.dynamodb.records.decode_source_record`) reads all forms
and a dead letter keeps the record. ``source`` is ``TABLE/stream/LABEL``,
``sequence`` the stream sequence number, ``arrival_ms`` the approximate
creation time.
"""

import base64
import datetime
from typing import Iterator, List, Mapping, NamedTuple, Optional

from botocore.exceptions import ClientError

from changeflow.io.json_records import dumps_json
from changeflow.io.kinesis import KinesisShardReader, ReadError, ShardBatch, Start, _code
from changeflow.io.shards import ShardPosition
from changeflow.model import SourceRecord

__all__ = ['DynamoDBStreamReader', 'DynamoDBStreamReaders', 'DynamoDBShardReaders', 'TrimmedData',
           'streams_client', 'dynamodb_client',
           'latest_stream_arn', 'record_json', 'MAX_LIMIT']

MAX_LIMIT = 1_000                      # GetRecords' largest Limit in DynamoDB Streams
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class TrimmedData(ReadError):
    """A checkpoint points before the stream's trim horizon: records were lost unread."""

    def __init__(self, stream: str, shard_id: str, sequence: Optional[str]):
        super().__init__(f'{stream}/{shard_id}: records after sequence number {sequence} are '
                         f'past the 24-hour retention (TrimmedDataAccessException); they were '
                         f'lost unread. Re-seed the table (an export) and start again.')
        self.stream = stream
        self.shard_id = shard_id
        self.sequence = sequence


def _config(read_timeout: float):
    from botocore.config import Config
    return Config(retries={'mode': 'standard', 'max_attempts': 3},
                  connect_timeout=5, read_timeout=read_timeout)


def streams_client(region: Optional[str] = None, endpoint_url: Optional[str] = None,
                   read_timeout: float = 20.0):
    """A DynamoDB Streams client on boto3's default credential chain."""
    import boto3
    return boto3.client('dynamodbstreams', region_name=region, endpoint_url=endpoint_url,
                        config=_config(read_timeout))


def dynamodb_client(region: Optional[str] = None, endpoint_url: Optional[str] = None):
    """A DynamoDB client (for ``DescribeTable``) on boto3's default credential chain."""
    import boto3
    return boto3.client('dynamodb', region_name=region, endpoint_url=endpoint_url,
                        config=_config(20.0))


def latest_stream_arn(dynamodb, table: str) -> str:
    """The table's current stream (``DescribeTable``'s ``LatestStreamArn``).

    Raises:
        ValueError: the table has no stream enabled.
    """
    description = dynamodb.describe_table(TableName=table)['Table']
    arn = description.get('LatestStreamArn')
    enabled = (description.get('StreamSpecification') or {}).get('StreamEnabled')
    if not arn or enabled is False:
        raise ValueError(f'DynamoDB table {table!r} has no stream enabled; enable one '
                         f'(StreamViewType NEW_AND_OLD_IMAGES) or give stream_arn')
    return arn


def _jsonable(value):
    """boto3's parsed values back to the service's JSON forms (B as base64)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode('ascii')
    return value


def record_json(record: Mapping, stream_arn: str) -> bytes:
    """A boto3 ``get_records`` record as Lambda-event JSON (a ``dynamodb-jsonl`` line)."""
    body = dict(record['dynamodb'])
    created = body.get('ApproximateCreationDateTime')
    if isinstance(created, datetime.datetime):
        # Epoch seconds; microseconds survive: a double holds them for any
        # date before 2255 (its spacing near 2**33 s is 2**-19 s < 1 µs / 2).
        body['ApproximateCreationDateTime'] = ((created - _EPOCH) // datetime.timedelta(
            microseconds=1)) / 1_000_000
    out = {k: v for k, v in record.items() if k not in ('dynamodb', 'SequenceNumber')}
    out['dynamodb'] = _jsonable(body)
    out['eventSourceARN'] = stream_arn
    return dumps_json(out)


class _Sequenced:
    """The streams client with each record's ``dynamodb.SequenceNumber`` also
    at the top of the record, where the Kinesis reader's loop reads it."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_records(self, **kwargs):
        response = self._client.get_records(**kwargs)
        records = [{**r, 'SequenceNumber': r['dynamodb']['SequenceNumber']}
                   for r in response.get('Records', ())]
        return {**response, 'Records': records}


class DynamoDBStreamReader(KinesisShardReader):
    """Reads a DynamoDB stream's shards through a boto3 ``dynamodbstreams`` client.

    Args:
      client: a DynamoDB Streams client (:func:`streams_client`), opened by the
        caller or in a DoFn's ``setup``.
      limit: records per ``GetRecords`` call, at most 1,000.
      reads_per_second: ``GetRecords`` calls per shard and second (AWS
        advises at most 2 readers of a shard; 4 calls/s per shard is safe).
      page_size: ``Limit`` of ``DescribeStream`` (None: the service default, 100).
      The rest as :class:`~changeflow.io.kinesis.KinesisShardReader`.

    ``read_to_tip(stream_arn, checkpoints, start)`` is the Kinesis reader's:
    batches per ``GetRecords`` call, parents first; commit ``batch.position``
    only after the batch is processed.
    """

    max_limit = MAX_LIMIT

    def __init__(self, client, limit: int = MAX_LIMIT, reads_per_second: float = 4.0,
                 dynamodb=None, **kwargs):
        super().__init__(_Sequenced(client), limit, reads_per_second, **kwargs)
        self._dynamodb = dynamodb   # resolves a table's name to its stream (resolve_stream)
        self._stream_arn = ''
        self._source = ''
        self._not_before_ms: Optional[int] = None

    def list_shards(self, stream: str) -> List[dict]:
        """Every shard of the stream: all ``DescribeStream`` pages."""
        shards, args = [], {'StreamArn': stream}
        if self._page_size:
            args['Limit'] = self._page_size
        while True:
            description = self._call(self._client.describe_stream, **args)['StreamDescription']
            shards.extend(description.get('Shards', ()))
            last = description.get('LastEvaluatedShardId')
            if not last:
                return shards
            args = {**args, 'ExclusiveStartShardId': last}

    def resolve_stream(self, stream: str) -> str:
        """A stream ARN as given; a table's name: its latest stream's ARN."""
        if stream.startswith('arn:'):
            return stream
        if self._dynamodb is None:
            raise ValueError(f'{stream!r} is a table name: this reader has no DynamoDB '
                             f'client to find its stream (give the stream ARN)')
        return latest_stream_arn(self._dynamodb, stream)

    def shard_iterator(self, stream: str, shard_id: str, position: ShardPosition,
                       start: Start) -> str:
        """An iterator after ``position``, or at ``start`` (``at_timestamp``:
        the trim horizon; :meth:`read_to_tip` drops what came before)."""
        if position.sequence is not None:
            where = {'ShardIteratorType': 'AFTER_SEQUENCE_NUMBER',
                     'SequenceNumber': position.sequence}
        elif start.kind == 'latest':
            where = {'ShardIteratorType': 'LATEST'}
        else:
            where = {'ShardIteratorType': 'TRIM_HORIZON'}
        try:
            response = self._call(self._client.get_shard_iterator, StreamArn=stream,
                                  ShardId=shard_id, **where)
        except ClientError as e:
            if _code(e) == 'TrimmedDataAccessException':
                raise TrimmedData(stream, shard_id, position.sequence) from e
            raise
        return response['ShardIterator']

    def read_to_tip(self, stream: str, checkpoints: Optional[Mapping[str, ShardPosition]] = None,
                    start: Start = Start()) -> Iterator[ShardBatch]:
        """Every shard from its checkpoint to the tip, parents first (see the
        Kinesis reader). ``stream`` is the stream ARN."""
        self.begin(stream)
        # AWS floors record times to the second: keep the whole second.
        self._not_before_ms = (start.timestamp_ms // 1000 * 1000
                               if start.kind == 'at_timestamp' else None)
        for batch in super().read_to_tip(stream, checkpoints, start):
            if self._not_before_ms is not None:
                batch = batch._replace(records=tuple(
                    r for r in batch.records if r.arrival_ms >= self._not_before_ms))
            yield batch

    def begin(self, stream: str) -> str:
        """Records of ``stream`` (an ARN) are named ``TABLE/stream/LABEL``."""
        from changeflow.dynamodb.records import table_from_arn
        self._stream_arn = stream
        label = stream.rsplit('/stream/', 1)[-1]
        self._source = f'{table_from_arn(stream)}/stream/{label}'
        return self._source

    @staticmethod
    def _caught_up(records, millis_behind) -> bool:
        return not records

    @staticmethod
    def _records_args(stream: str) -> dict:
        return {}   # DynamoDB Streams' GetRecords takes the iterator alone

    def _source_record(self, record: Mapping, source: str, shard_id: str) -> SourceRecord:
        created = record['dynamodb'].get('ApproximateCreationDateTime')
        arrival_ms = ((created - _EPOCH) // datetime.timedelta(milliseconds=1)
                      if isinstance(created, datetime.datetime) else 0)
        return SourceRecord(record_json(record, self._stream_arn), self._source, shard_id,
                            record['SequenceNumber'], arrival_ms)

    def _recover(self, stream, cursor, error: ClientError, start: Start):
        """Trimmed data is data loss; throttling and expired iterators as Kinesis."""
        if _code(error) == 'TrimmedDataAccessException':
            raise TrimmedData(stream, cursor.shard_id, cursor.position.sequence) from error
        super()._recover(stream, cursor, error, start)


class DynamoDBStreamReaders:
    """The DynamoDB Streams side of :class:`~changeflow.io.kinesis_source.ReadStreamToTip`
    (see :class:`~changeflow.io.kinesis_source.KinesisReaders`): the stream
    is a table's name, resolved to its ``LatestStreamArn`` each cycle, or a
    stream ARN, read as given. Metrics namespace ``changeflow.read_dynamodb_streams``.
    """

    namespace = 'changeflow.read_dynamodb_streams'

    def __init__(self, region: Optional[str] = None, endpoint_url: Optional[str] = None,
                 limit: int = MAX_LIMIT, reads_per_second: float = 4.0):
        self._region = region
        self._endpoint_url = endpoint_url
        self._limit = limit
        self._reads_per_second = reads_per_second
        self._streams = self._dynamodb = None

    def setup(self) -> None:
        self._streams = streams_client(self._region, self._endpoint_url)
        self._dynamodb = dynamodb_client(self._region, self._endpoint_url)

    def stream(self, stream: str) -> str:
        return stream if stream.startswith('arn:') else latest_stream_arn(self._dynamodb, stream)

    def reader(self) -> DynamoDBStreamReader:
        return DynamoDBStreamReader(self._streams, limit=self._limit,
                                    reads_per_second=self._reads_per_second)


class DynamoDBShardReaders(NamedTuple):
    """A picklable ``reader_factory`` for the unbounded mode's
    :class:`~changeflow.io.stream_sdf.ReadStream`: a DynamoDB Streams reader
    on new boto3 clients (default credential chain), built on the worker; a
    table's name is read as its latest stream."""
    region: Optional[str] = None
    endpoint_url: Optional[str] = None
    limit: int = MAX_LIMIT
    reads_per_second: float = 4.0

    def __call__(self) -> DynamoDBStreamReader:
        return DynamoDBStreamReader(streams_client(self.region, self.endpoint_url),
                                    limit=self.limit, reads_per_second=self.reads_per_second,
                                    dynamodb=dynamodb_client(self.region, self.endpoint_url))
