"""What happened after sending: providers' webhooks and our own tracking, back into the rules."""
