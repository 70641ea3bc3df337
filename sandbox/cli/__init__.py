"""`python -m sandbox <command>`: drive a running development sandbox from outside its process, through its
loopback admin endpoint (sandbox.admin.endpoint), each command with `--json` for scripts.
"""
