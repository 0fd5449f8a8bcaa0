"""Who may dispatch: the lease and its fence, a standby's watch over the holder, the
watchdog thread, the clock deadlines count on, and the handover of a leader cut off from its
broker (invariants 2, 4-8, 10, 13-15, 17)."""
