"""toolwatch collector."""

import os

# The daemon forks to write detector-state snapshots (collector/snapshot_process.py), and the child
# never uses gRPC. gRPC's own fork handlers (read when grpc is first imported) would only log
# "Other threads are currently calling into gRPC, skipping fork() handlers" to stderr at every
# snapshot. An operator's own setting is kept.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
