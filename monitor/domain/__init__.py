"""The pure core: CMK usability rules, revocation prediction, findings, incidents and names.

Standard library only, no I/O, no clock (time is passed in). Imports nothing of ours outside itself;
every other layer may import it.
"""
