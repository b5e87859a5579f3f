"""Trainyard's central service: the single source of truth for every object and every state."""
