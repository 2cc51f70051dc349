"""What the controller and the agents both need, one copy each: the task group, logging, the health server
and atomic files. Depends on nothing of ours (checked by tests/test_layers.py)."""
