"""Delivery channels: email, SMS, webhook, task, and the local file outbox. Each takes an injected client."""
