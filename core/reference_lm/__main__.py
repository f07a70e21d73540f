"""``python -m stepbridge.reference_lm``: the same options as ``stepbridge lm serve``."""

from .server import main

main()
