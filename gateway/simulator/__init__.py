"""The simulated device: its line protocol (`device`), its end of a link with faults, a
baud rate and replay (`link`, `replay`; no I/O), and a standalone server (`serve`,
`__main__`). The `sim://` transport drives the same `link`, in process."""
