"""`python -m edgeprune ...` (and `torchrun ... -m edgeprune build ...`) is the `edgeprune` command."""
from .cli import main

main()
