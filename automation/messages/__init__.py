"""Messages: the template store that checks and renders a message (``store``) in Jinja2's sandbox
(``sandbox``) with the template filters (``filters``) and context (``context``); one message rendered
for one action, as the dispatcher sends it and the preview shows it (``render``); SMS encoding and
segments (``sms``); and the signed unsubscribe tokens (``unsubscribe``)."""
