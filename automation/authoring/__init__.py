"""Tools for playbook authors: ``validate``, ``lint``, ``explain``, ``preview`` (with its table and HTML
renderings), journey tests (``journeys``, what ``automation test`` runs) and ``scaffold`` (``init``)."""
