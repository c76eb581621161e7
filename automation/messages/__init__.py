"""Messages: the template store that checks and renders a message in Jinja2's sandbox (``store``) and
the signed unsubscribe tokens (``unsubscribe``)."""
