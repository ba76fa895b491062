"""The Table Storage state store in parts: entity encoding (codec), the plumbing every part uses
(base), and one part per kind of record; `monitor.adapters.state_tables.TableStateStore` joins them."""
