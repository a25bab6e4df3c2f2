# Stand-in for MicroPython's `machine` on the unix port (tests only): a Pin that remembers
# its value and prints each change as "# pin N = V" on stderr.
import sys


class Pin:
    OUT = 1
    IN = 0

    def __init__(self, pin, mode=IN):
        self.pin = pin
        self._value = 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0
        sys.stderr.write("# pin %d = %d\n" % (self.pin, self._value))
