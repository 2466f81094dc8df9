"""Command-line interface: ``optimum-cli prune ...`` (Optimum plugin) and the ``optimum-prune`` script."""
