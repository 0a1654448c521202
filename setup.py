"""Installs changeflow; usable as Beam's --setup_file on Dataflow/Flink workers."""

import setuptools

setuptools.setup(
    name='changeflow',
    version='0.1.0',
    description='Apache Beam pipelines that turn database change streams into '
                'replicas, Parquet backups and notifications.',
    packages=setuptools.find_packages(include=['changeflow', 'changeflow.*']),
    python_requires='>=3.11',  # possessive regex quantifiers in the audit parser,
    install_requires=[
        'alembic>=1.13,<2',
        'apache-beam>=2.77.0,<2.78',
        'boto3>=1.34,<2',
        # the Parquet sink's merge of sorted slices (io/parquet.py); the range
        # apache-beam 2.77 requires
        'numpy>=1.14.3,<2.5',
        'orjson>=3.9,<4',
        'pyarrow>=14,<26',
        'PyYAML>=6,<7',
        'sqlalchemy>=2.0,<2.2',
        'sqlglot>=30,<31',
        'tenacity>=8.2,<10',
        # webhooks (io/messaging.py); botocore already requires urllib3 >=1.25.4,<3,
        # and the calls used there are the same in 1.26 and 2.x
        'urllib3>=1.26,<3',
        # runs and batches (transforms/runs.py); the range apache-beam 2.77 requires
        'zstandard>=0.18,<1',
    ],
    extras_require={
        # The Dataflow runner (and --dry_run translation checks).
        'dataflow': ['apache-beam[gcp]>=2.77.0,<2.78'],
        'mysql': ['pymysql>=1.1,<2'],
        'postgres': ['psycopg2-binary>=2.9,<3'],
        'test': [
            'pytest>=8,<10',
            # pytest.ini runs the suite on up to 4 processes, a test file per process
            'pytest-xdist>=3.5,<4',
            # 5.2.6 pages ListShards by a token that no longer names its stream: a
            # NextToken-only call (what AWS requires) fails 'Stream None not found'
            'moto[server]>=5.2,<5.2.6',
            'pymysql>=1.1,<2',
            'psycopg2-binary>=2.9,<3',
            'hypothesis>=6.100,<7',  # tests/test_fuzz.py
            # tests/test_dataflow_translation.py (the extra 'dataflow'); it costs
            # every Beam import ~0.7 s CPU more (the GCS and Dataflow clients).
            'apache-beam[gcp]>=2.77.0,<2.78',
            # tests/test_portable_runner.py: its workers pip-install the staged
            # --setup_file sdist offline, which needs bdist_wheel; setuptools
            # < 70.1 (a fresh Python 3.11 venv has 65.5) takes it from wheel;
            # wheel 0.48, checked here, still provides it (deprecated: capped).
            'wheel>=0.40,<0.49',
        ],
    },
    entry_points={'console_scripts': ['changeflow=changeflow.cli:main']},
)
