"""UDFC compensation: closed-form scales (numpy) and their application to the graph."""
