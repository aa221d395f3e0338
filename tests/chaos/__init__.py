"""Chaos: everything fails at random moments during a steady load; nothing may be lost."""
