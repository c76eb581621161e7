"""The outbox: every planned message as a row with a UNIQUE idempotency key and a lease (``store``),
sending what is due through the channels (``dispatch``), consent (``suppressions``) and per-channel rate
limits (``ratelimit``)."""
