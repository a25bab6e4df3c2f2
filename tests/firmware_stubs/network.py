# Stand-in for MicroPython's `network` on the unix port (tests only): a WLAN that is
# connected at once, with the host's loopback address.
STA_IF = 0
AP_IF = 1


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False

    def active(self, on=None):
        if on is not None:
            self._active = bool(on)
        return self._active

    def isconnected(self):
        return self._active

    def connect(self, ssid, password):
        pass

    def ifconfig(self):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
