"""A real multi-node Ray cluster on this machine (`make cluster-up/down`), and the process-group
helpers it stops its nodes with."""
