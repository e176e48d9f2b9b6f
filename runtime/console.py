"""How flowgrad's rich consoles write when they write to no terminal."""
from __future__ import annotations

import os

# Written to a file or a pipe (a log, grep), rich drew tables and the progress line 80 columns
# wide and cut what did not fit: summary's parameter names read 'enc.bidirectional…' five times
# over, and each epoch's line 'epo… train_loss ... valid_accura…'.
NO_TERMINAL_WIDTH = 10_000


def widen_off_terminal(console):
    """A rich console whose lines are as long as they need to be when it writes to no terminal
    (COLUMNS, when set, still gives the width)."""
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = NO_TERMINAL_WIDTH
    return console


def print_table(console, table) -> None:
    """A rich table, whose title line rich pads to the table's width; to no terminal the lines
    end at their last character (a piped `flowgrad ops` had a title line of 650 columns)."""
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
