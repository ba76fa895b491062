"""The pure core: CMK usability rules, revocation prediction and findings (stdlib only, no I/O, no clock)."""
