"""Front ends: the command line, the headless reporter, the HTTP API and the console.

Thin clients of status snapshots and commands; nothing below imports them."""
