"""``python -m mult.cli`` runs the command line."""

from mult.cli import main

main()
