"""The worker behind ``automation run``: one tick of a playbook (``tick``), the validated playbooks and
channels at a given time (``daemon``), the scheduler and its signals (``scheduler``), the garbage
collector's pause during ticks (``gcpause``), the metrics server (``metrics``) and what ``status`` reports."""
