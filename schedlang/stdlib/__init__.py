"""Schedlang standard library, written in schedlang (package data)."""
