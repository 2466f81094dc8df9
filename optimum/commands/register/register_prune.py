"""Registers ``optimum-cli prune`` (PEP 420 namespace module: no ``__init__.py`` anywhere under ``optimum/``).

optimum-cli imports every ``optimum.commands.register.*`` module at start-up, so this one stays light:
the command classes import only argparse and Optimum's command base; the work is imported in ``run()``.
"""

from optimum_prune.commands.base import PruneCommand

REGISTER_COMMANDS = [PruneCommand]
