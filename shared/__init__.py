"""The wire between the API and the agent: schemas, enums and rules both sides import.

No I/O, no framework code. Change it additively: an older agent must keep working against a newer API.
"""
