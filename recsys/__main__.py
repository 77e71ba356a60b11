"""``python -m recsys``: the CLI, for launchers such as ``torchrun -m recsys train ...``."""

from recsys.cli.main import main

main()
