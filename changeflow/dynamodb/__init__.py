"""DynamoDB as a source: stream records and table exports, decoded exactly.

:mod:`changeflow.dynamodb.records` decodes AttributeValues and stream records
(boto3, Lambda event JSON, archived JSON lines, the Kinesis streaming
destination) into :class:`~changeflow.dynamodb.records.StreamRecord` and
converts them to :class:`~changeflow.model.Change`;
:mod:`changeflow.dynamodb.exports` reads DynamoDB's export to S3 as a table's
initial state. The stream reader is :mod:`changeflow.io.dynamodb_streams`.
"""
