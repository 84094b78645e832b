"""keymail: authentication emails that carry an encrypted account key."""

__version__ = "0.1.0"
