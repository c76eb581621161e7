"""The HTTP surface of ``automation serve``: the application (``app``) and one module per concern, each
with its ``routes``: today ``unsubscribe``; ``pages`` renders the small HTML answers for people."""
