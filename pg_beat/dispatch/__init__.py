"""What the leader does each turn: the dispatch loop (``loop``), planning and claiming ticks
in one fenced transaction, recording what the publisher did, and the loop's database sessions
and errors (invariants 1, 2, 11, 19)."""
