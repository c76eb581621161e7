"""Data in: importing customers and events from CSV and JSON Lines (``importer``) and synthetic sample
data (``sample_data``)."""
