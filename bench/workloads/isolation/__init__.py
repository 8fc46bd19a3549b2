"""The isolation family: how well a tier isolates, next to what it costs.

- visibility.py: what an instance sees of the host and may do (read-only audit);
- containment.py: a bounded fork storm against the global pid table, with and without `pids`;
- interference.py: a victim workload alone and next to an antagonist in a sibling instance;
- accounting.py: known memory made inside vs what the tier reports and the host pays.
Programs run inside instances live in inside/ (standard library only).
"""
