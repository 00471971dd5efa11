"""``python -m mult`` runs the command line."""

from mult.cli import main

main()
