"""Shared fixtures: the recorded audit fixture, real databases, moto's server."""

import json
import os
import socket
import uuid

import pytest

# kinesalite_endpoint: the resharding emulator's fixture, for every test file.
pytest_plugins = ['kinesis_servers']

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
AUDIT = os.path.join(DATA, 'audit')

POSTGRES_URL = os.environ.get(
    'CHANGEFLOW_TEST_POSTGRES_URL', 'postgresql+psycopg2://postgres@127.0.0.1:5432/test')
MARIADB_URL = os.environ.get(
    'CHANGEFLOW_TEST_MARIADB_URL', 'mysql+pymysql://root:@127.0.0.1:3306/test?charset=utf8mb4')


@pytest.fixture(scope='session')
def audit_dir():
    return AUDIT


@pytest.fixture(scope='session')
def expected_tables():
    """Every table as MariaDB held it after the recorded workload."""
    with open(os.path.join(AUDIT, 'expected_tables.json'), encoding='utf-8') as f:
        return json.load(f)


def _reachable(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _database_url(url, host, port, name):
    if not _reachable(host, port):
        pytest.skip(f'{name} is not reachable on {host}:{port}; '
                    f'start it to run the {name} tests')
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    return f'sqlite:///{tmp_path / "replica.db"}'


@pytest.fixture
def postgres_url():
    return _database_url(POSTGRES_URL, '127.0.0.1', 5432, 'PostgreSQL')


@pytest.fixture
def mariadb_url():
    return _database_url(MARIADB_URL, '127.0.0.1', 3306, 'MariaDB')


@pytest.fixture
def mariadb_schema_shop(mariadb_url):
    """``mariadb_url`` whose server holds database cf_schema_shop, created by
    the committed tests/data/schema/make_schema_fixture.py when missing."""
    import importlib.util
    import sqlalchemy
    engine = sqlalchemy.create_engine(mariadb_url)
    try:
        with engine.connect() as conn:
            # Test processes (pytest-xdist) share the server: one creates, the others wait.
            conn.execute(sqlalchemy.text("SELECT GET_LOCK('cf_schema_shop', 120)"))
            try:
                exists = conn.execute(sqlalchemy.text(
                    'SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :d'),
                    {'d': 'cf_schema_shop'}).scalar()
                if not exists:
                    spec = importlib.util.spec_from_file_location(
                        'make_schema_fixture', os.path.join(DATA, 'schema', 'make_schema_fixture.py'))
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    module.create(conn.connection.dbapi_connection)
            finally:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK('cf_schema_shop')"))
    finally:
        engine.dispose()
    return mariadb_url


@pytest.fixture(params=['sqlite', 'postgresql', 'mariadb'])
def database_url(request):
    """Each supported replica database; skipped where the server is down."""
    return request.getfixturevalue(
        {'sqlite': 'sqlite_url', 'postgresql': 'postgres_url',
         'mariadb': 'mariadb_url'}[request.param])


@pytest.fixture
def table_prefix():
    """A unique table-name prefix, so tests sharing a server database don't collide."""
    return f't{uuid.uuid4().hex[:8]}_'


@pytest.fixture(scope='session')
def moto_endpoint():
    """A real moto server on a free loopback port; boto3 talks HTTP to it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f'http://{host}:{port}'
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch):
    """Credentials and region for boto3's default chain, pointed at moto."""
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'testing')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'testing')
    monkeypatch.setenv('AWS_DEFAULT_REGION', 'us-east-1')
    monkeypatch.setenv('AWS_ENDPOINT_URL', moto_endpoint)
    return moto_endpoint
