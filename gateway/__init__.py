"""A WebSocket-to-device gateway: browser and script clients to microcontrollers over
serial, TCP and UDP, with a simulated device for work without hardware."""

__version__ = "0.1.0"
