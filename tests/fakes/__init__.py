"""Test doubles for external services (fake exchanges)."""
