"""Programs run inside an instance with the bench image's python3 (`python3 -c SOURCE ARGS`).

Each module is standalone (standard library only, Python 3.11) so its source can be handed to
any tier's `exec` as an argv element: nothing is copied in, and the image need not change.
"""
