"""The outbox: every planned message as a row with a UNIQUE idempotency key, recorded during a tick
(``sink``: ``OutboxSink``, its batches and the write-along), claimed, marked and released under a lease
(``lease``: the statuses, ``claim``, ``mark_sent``, ``mark_failed``, ``release``, ``next_due``), sent when due
through the channels (``dispatch``), with consent (``suppressions``) and per-channel rate limits
(``ratelimit``)."""
