"""The simulated device: its line protocol (`device`) and a standalone server (`__main__`)."""
