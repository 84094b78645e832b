"""Delivery: finished bytes to disk or to an SMTP server."""
