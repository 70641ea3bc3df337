"""`make start` (`python -m devhost.start`): the whole development loop in one command — Azurite, the
development sandbox and the function app on the development host — until Ctrl-C, with state kept under .sandbox/.
"""
