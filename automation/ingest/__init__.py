"""Data in: importing customers and events from CSV and JSON Lines (``importer``: the public
``import_customers`` and ``import_events`` and the loop; ``readers``: reading the files within their line
limits; ``rows``: field validation and the row rules, ``customer_columns`` among them; ``writer``: the
upsert and the event append) and synthetic sample data (``sample_data``)."""
