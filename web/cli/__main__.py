"""`python -m web.cli`: the same as the `recsearch` command."""

from web.cli import main

main()
