"""Beam's Python job service and an EXTERNAL worker pool, as local processes for tests.

The job service is ``apache_beam.runners.portability.local_job_service_main``;
the workers come from ``apache_beam.runners.worker.worker_pool_main`` with
``--container_executable`` set to ``portable_worker_boot.py``, which installs
the job's ``--setup_file`` package before starting each SDK worker. The pool
runs in a virtual environment made by :func:`worker_environment`: it sees the
test environment's packages (Beam, changeflow's requirements) but not
changeflow itself, so a job only runs there if staging ships changeflow.

Both services listen on ports the OS picks (port 0), run in their own process
groups, and :meth:`Service.stop` ends the group (the pool's SDK workers with it).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
BOOT = os.path.join(HERE, 'portable_worker_boot.py')
START_TIMEOUT = 30.0
_POOL_ADDRESS = re.compile(r'Started worker pool servicer at port: (\S+:\d+)')
_POOL_MAIN = ('import logging, sys; logging.basicConfig(level=logging.INFO); '
              'from apache_beam.runners.worker import worker_pool_main; '
              'worker_pool_main.main(sys.argv[1:])')


class ServiceFailed(RuntimeError):
    """A service exited or did not announce its endpoint in time (message: its log)."""


def log_tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


class Service(NamedTuple):
    process: subprocess.Popen
    endpoint: str  # host:port
    log: str       # its stdout and stderr

    def group_alive(self) -> bool:
        """Whether any process of the service's group (its workers too) is left."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the service's process group, then SIGKILL to what is left of
        it (the pool's SDK workers, or a leader that ignored SIGTERM); returns
        when the group is gone."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.process.poll()  # reaps the leader, our child
                if not self.group_alive():
                    return
                time.sleep(0.02)


def _spawn(argv, log: str, cwd: str, env=None) -> subprocess.Popen:
    with open(log, 'wb') as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env, start_new_session=True)


def _wait_for(process, log, find: Callable[[], str], what: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        if process.poll() is not None:
            raise ServiceFailed(f'{what} exited with {process.returncode}:\n{log_tail(log)}')
        time.sleep(0.05)
    raise ServiceFailed(f'{what} did not start in {START_TIMEOUT:.0f}s:\n{log_tail(log)}')


def start_job_service(work_dir: str) -> Service:
    """Beam's Python job service on a free loopback port."""
    port_file = os.path.join(work_dir, 'job_service.port')
    log = os.path.join(work_dir, 'job_service.log')
    process = _spawn([sys.executable, '-m',
                      'apache_beam.runners.portability.local_job_service_main',
                      '--port', '0', '--port_file', port_file,
                      '--staging_dir', os.path.join(work_dir, 'staging')], log, work_dir)

    def port():
        if os.path.exists(port_file):  # written whole, then renamed into place
            with open(port_file, encoding='ascii') as f:
                return f.read().strip()
        return ''
    try:
        return Service(process, f'localhost:{_wait_for(process, log, port, "job service")}',
                       log)
    except ServiceFailed:
        Service(process, '', log).stop()
        raise


def worker_environment(venv_dir: str) -> str:
    """A virtual environment that sees this process's import path (Beam and
    changeflow's requirements) as plain path lines, less the tests' folder and
    any directory holding a ``changeflow`` package (a checkout); ``.pth``
    files on that path, among them changeflow's editable install, are not run
    there. Returns its bin directory."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv_dir], check=True)
    python = os.path.join(venv_dir, 'bin', 'python')
    site = subprocess.run(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        check=True, capture_output=True, text=True).stdout.strip()
    paths = [p for p in dict.fromkeys(os.path.abspath(p) for p in sys.path if p)
             if os.path.isdir(p) and p != HERE
             and not os.path.exists(os.path.join(p, 'changeflow', '__init__.py'))]
    with open(os.path.join(site, 'test_environment.pth'), 'w', encoding='utf-8') as f:
        f.write(''.join(p + '\n' for p in paths))
    return os.path.dirname(python)


def start_worker_pool(work_dir: str, bin_dir: str) -> Service:
    """An EXTERNAL worker pool whose SDK workers boot through ``BOOT`` with the
    python of ``bin_dir``; it runs in ``work_dir`` (never a checkout, whose
    ``changeflow`` the workers would import from the working directory)."""
    log = os.path.join(work_dir, 'worker_pool.log')
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get('PATH', ''),
               TMPDIR=work_dir)
    for name in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV'):
        env.pop(name, None)
    # worker_pool_main logs its address at INFO but configures no handler: with
    # none on the root logger (as with apache-beam[gcp] installed) Python's
    # last-resort handler drops INFO, so the address is never printed.
    process = _spawn([os.path.join(bin_dir, 'python'), '-c', _POOL_MAIN,
                      '--service_port', '0', '--container_executable', BOOT],
                     log, work_dir, env)

    def address():
        found = _POOL_ADDRESS.search(log_tail(log, 200))
        return found.group(1) if found else ''
    try:
        return Service(process, _wait_for(process, log, address, 'worker pool'), log)
    except ServiceFailed:
        Service(process, '', log).stop()
        raise


def run_with_timeout(job: Callable[[], object], timeout: float, services=()):
    """``job()``'s result; a job whose workers never start waits forever, so after
    ``timeout`` the services are stopped (which ends the wait) and TimeoutError
    raised with their logs."""
    outcome = {}

    def target():
        try:
            outcome['result'] = job()
        except BaseException as error:  # handed to the caller's thread
            outcome['error'] = error
    thread = threading.Thread(target=target, daemon=True, name='portable-job')
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for service in services:
            service.stop()
        thread.join(10)
        logs = '\n'.join(f'--- {s.log}\n{log_tail(s.log)}' for s in services)
        raise TimeoutError(f'the job did not finish in {timeout:.0f}s\n{logs}')
    if 'error' in outcome:
        raise outcome['error']
    return outcome['result']
