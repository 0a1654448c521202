"""changeflow: Apache Beam pipelines that turn database change streams into
synchronized replicas, Parquet backups and notifications."""

__version__ = '0.1.0'
