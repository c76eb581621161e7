"""Playbooks: the YAML file read with positions and limits (``source``), the validated model and its
loading (``models``), and the JSON Schema editors use (``schema``)."""
