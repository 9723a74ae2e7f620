"""The ``fieldgate`` subcommands (see :mod:`gateway.cli`)."""
