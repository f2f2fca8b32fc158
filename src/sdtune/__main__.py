"""``python -m sdtune`` runs the CLI (used by tests and by ``accelerate launch -m sdtune``)."""

from sdtune.cli import main

main()
