"""The use cases and their seams: reading the fleet, the poll, events, alerting, remediation, status.

What keyhealth does, written against ports (`ports`: the readers, sinks and remediators it needs;
`state`: the state store) so that any Azure, store or sink adapter fits. May import `monitor.domain` and
`monitor.formats`; never `monitor.adapters`, `monitor.entry` or `monitor.sandbox`: the composition root
(`monitor.entry.bootstrap`) hands the adapters in.
"""
