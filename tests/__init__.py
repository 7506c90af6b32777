"""Candlewire test suite."""
