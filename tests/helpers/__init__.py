"""Test helpers shared by several test files (not tests themselves)."""
