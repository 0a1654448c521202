"""Writes the DynamoDB fixtures in this folder (run from the repository root).

* ``export/``: a DYNAMODB_JSON export of a ``prod-Card`` table laid out as
  DynamoDB writes it (``AWSDynamoDB/<ExportId>/manifest-summary.json``,
  ``manifest-files.json``, ``data/*.json.gz``; the documented format:
  https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/S3DataExport.Output.html),
  gzip written with mtime 0 so the bytes are reproducible.
* ``moto_stream.jsonl``: stream records recorded from moto's server through
  :class:`changeflow.io.dynamodb_streams.DynamoDBStreamReader` (a
  ``dynamodb-jsonl`` archive) for put_item, update_item, delete_item and
  transact_write_items on a table named ``prod-Card.v1``.
"""

import base64
import gzip
import hashlib
import io
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
EXPORT_ID = '01764583200000-5e1f2a3b'
ITEMS = [
    {'id': {'N': '1'}, 'title': {'S': 'first'}, 'expiresAt': {'N': '1764590400'},
     'price': {'N': '12.50'}, 'tags': {'SS': ['new', 'promo']}},
    {'id': {'N': '2'}, 'title': {'S': 'second'}, 'meta': {'M': {'seen': {'BOOL': True},
     'dims': {'L': [{'N': '8.5'}, {'N': '11'}, {'NULL': True}]}}}},
    {'id': {'N': '3'}, 'title': {'S': 'third'}, 'blob': {'B': base64.b64encode(b'\x00\xff').decode()},
     'big': {'N': '12345678901234567890123456789012345678'}},
]


def _gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode='wb', mtime=0) as f:
        f.write(data)
    return out.getvalue()


def write_export(root=os.path.join(HERE, 'export'), prefix='cards'):
    folder = os.path.join(root, 'AWSDynamoDB', EXPORT_ID)
    os.makedirs(os.path.join(folder, 'data'), exist_ok=True)
    parts = [ITEMS[:2], ITEMS[2:], []]          # an empty partition gives an empty file
    names = ['a6vx2qlmp4ykrgnb3ehwtrdqqe', 'bzs7o3xuqjg4lf5i2mwcvhyn7a', 'c4d2pvqz6s3rfmyjxleubgkoh4']
    manifest = []
    for name, items in zip(names, parts):
        data = _gzip(b''.join(json.dumps({'Item': i}, separators=(',', ':')).encode() + b'\n'
                              for i in items))
        with open(os.path.join(folder, 'data', f'{name}.json.gz'), 'wb') as f:
            f.write(data)
        manifest.append({'itemCount': len(items),
                         'md5Checksum': base64.b64encode(hashlib.md5(data).digest()).decode(),
                         'etag': hashlib.md5(data).hexdigest() + '-1',
                         'dataFileS3Key': f'{prefix}/AWSDynamoDB/{EXPORT_ID}/data/{name}.json.gz'})
    with open(os.path.join(folder, 'manifest-files.json'), 'w') as f:
        f.write(''.join(json.dumps(m) + '\n' for m in manifest))
    summary = {
        'version': '2020-06-30',
        'exportArn': f'arn:aws:dynamodb:us-east-1:123456789012:table/prod-Card/export/{EXPORT_ID}',
        'startTime': '2026-12-01T10:00:00.123Z', 'endTime': '2026-12-01T10:05:43.897Z',
        'tableArn': 'arn:aws:dynamodb:us-east-1:123456789012:table/prod-Card',
        'tableId': '12345a12-abcd-123a-ab12-1234abc12345',
        'exportTime': '2026-12-01T10:00:00.123Z', 's3Bucket': 'cards-export', 's3Prefix': prefix,
        's3SseAlgorithm': 'AES256', 's3SseKmsKeyId': None,
        'manifestFilesS3Key': f'{prefix}/AWSDynamoDB/{EXPORT_ID}/manifest-files.json',
        'billedSizeBytes': 0, 'itemCount': len(ITEMS), 'outputFormat': 'DYNAMODB_JSON'}
    with open(os.path.join(folder, 'manifest-summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    open(os.path.join(folder, '_started'), 'w').close()
    return folder


def record_moto_stream(path=os.path.join(HERE, 'moto_stream.jsonl')):
    import boto3
    from moto.server import ThreadedMotoServer
    from changeflow.io.dynamodb_streams import DynamoDBStreamReader, latest_stream_arn
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        kw = dict(endpoint_url=f'http://{host}:{port}', region_name='us-east-1',
                  aws_access_key_id='testing', aws_secret_access_key='testing')
        ddb = boto3.client('dynamodb', **kw)
        table = 'prod-Card.v1'
        ddb.create_table(
            TableName=table, BillingMode='PAY_PER_REQUEST',
            KeySchema=[{'AttributeName': 'id', 'KeyType': 'HASH'},
                       {'AttributeName': 'title', 'KeyType': 'RANGE'}],
            AttributeDefinitions=[{'AttributeName': 'id', 'AttributeType': 'N'},
                                  {'AttributeName': 'title', 'AttributeType': 'S'}],
            StreamSpecification={'StreamEnabled': True, 'StreamViewType': 'NEW_AND_OLD_IMAGES'})
        key = {'id': {'N': '1'}, 'title': {'S': 'a'}}
        ddb.put_item(TableName=table, Item={**key, 'n': {'N': '1.50'}, 'b': {'B': b'\x00\x01'},
                                            'ss': {'SS': ['b', 'a']},
                                            'm': {'M': {'x': {'L': [{'N': '1'}, {'NULL': True}]}}}})
        ddb.update_item(TableName=table, Key=key, UpdateExpression='SET n = n + :o',
                        ExpressionAttributeValues={':o': {'N': '1'}})
        ddb.transact_write_items(TransactItems=[
            {'Put': {'TableName': table, 'Item': {'id': {'N': '2'}, 'title': {'S': 'b'}}}},
            {'Update': {'TableName': table, 'Key': key, 'UpdateExpression': 'REMOVE ss'}}])
        ddb.delete_item(TableName=table, Key=key)
        reader = DynamoDBStreamReader(boto3.client('dynamodbstreams', **kw), reads_per_second=1000)
        arn = latest_stream_arn(ddb, table)
        with open(path, 'wb') as f:
            for batch in reader.read_to_tip(arn):
                for record in batch.records:
                    f.write(record.data + b'\n')
    finally:
        server.stop()


if __name__ == '__main__':
    print(write_export())
    record_moto_stream()
