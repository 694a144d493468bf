"""The configuration layer: schema, validation, command-line pre-checks, where conf/ lives.

Torch-free throughout: it runs before any heavy import.
"""
