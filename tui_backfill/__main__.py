"""`python -m tui_backfill` is the same as the `tui-backfill` console script."""

from tui_backfill.frontends.entry import console

console()
