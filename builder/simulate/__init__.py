"""Booting a finished image as Azure provisions it, with nothing outside the machine."""
