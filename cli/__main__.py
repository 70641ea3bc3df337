"""Operator command line: ``python -m cli <command>``. See ``python -m cli --help`` and the README."""

from cli.main import main

raise SystemExit(main())
