"""How a claimed tick reaches the broker: the publisher thread and its queue, one go of
sending, what an outcome means (retry, park, poison), push-once on Redis, the broker's health
and the message itself (invariants 3, 4, 12, 15, 16)."""
