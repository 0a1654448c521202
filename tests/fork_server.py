"""Starts ``changeflow`` commands as fresh processes forked from one that has
imported changeflow and Beam already (a start costs their imports, 1-7 s on
these machines, otherwise): the crash test restarts a follow run twenty times.

    python tests/fork_server.py        # then, one per line on stdin:
    start LOG ARG...    -> the child's pid: ``changeflow ARG...`` with stdout
                           and stderr to LOG
    wait PID            -> its exit status (negative: the signal that ended it)

Each child is a separate process running :func:`changeflow.cli.main`, as
``python -m changeflow ARG...`` does; the server itself starts no threads.
"""

import os
import sys

import changeflow.cli
import changeflow.pipelines.audit_sync  # noqa: F401 (imported here, once for every child)
import changeflow.pipelines.follow  # noqa: F401


def _child(log: str, argv):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        changeflow.cli.main(argv)
        status = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main():
    for line in sys.stdin:
        command, *args = line.split()
        if command == 'start':
            pid = os.fork()
            if pid == 0:
                _child(args[0], args[1:])
            print(pid, flush=True)
        elif command == 'wait':
            _, status = os.waitpid(int(args[0]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == '__main__':
    main()
