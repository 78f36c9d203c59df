"""Prompt template files (system.md, default.md, rewrite.md), read by evolve/proposers/prompt.py.

A package so that importlib.resources finds the files in an installed wheel as in the source tree.
"""
