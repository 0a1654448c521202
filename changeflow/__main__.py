"""``python -m changeflow``: the command-line interface."""

from changeflow.cli import main

if __name__ == '__main__':
    main()
