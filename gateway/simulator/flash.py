"""The simulated board's SPI flash: 4 MiB of bytes, and the id of the image it holds.

`FlashImage` has no I/O of its own; `load()` and `save()` put it in a file (the
simulator's `--flash PATH`, `sim://?flash=PATH`), the whole 4 MiB as it would read
back from the chip.

**The written image** is the flash from address 0 up to and including its last byte
that is not 0xFF (erased flash reads 0xFF). Its id is the first 12 hex digits of its
SHA-256. So `esptool write-flash 0x0 app.bin` into a blank (or erased) flash gives
`sha256(app.bin)` for any `app.bin` that does not end in 0xFF bytes (in general:
`sha256(app.bin.rstrip(b"\\xff"))`). A flash that is all 0xFF (never written, or after
`erase-flash`) holds no image: `image_id()` is None.

Writes replace bytes (a real NOR chip can only clear bits, which is why the loader
erases a region before writing it; the simulated loader erases too, so the result is
the same).
"""

from __future__ import annotations

import hashlib
import os

FLASH_SIZE = 4 * 1024 * 1024
SECTOR = 4096
ERASED = 0xFF
ID_DIGITS = 12
SCAN = 65536
BLANK = bytes([ERASED]) * SCAN


class FlashImage:
    """4 MiB of flash; held as one bytearray once written (a blank one costs nothing)."""

    def __init__(self, data: bytes | None = None):
        if data is not None and len(data) > FLASH_SIZE:
            raise ValueError(f"a flash image holds at most {FLASH_SIZE} bytes, not {len(data)}")
        self._data: bytearray | None = None  # None: all erased
        if data:
            self._bytes()[:len(data)] = data
        self.dirty = False  # changed since loaded or saved

    def _bytes(self) -> bytearray:
        if self._data is None:
            self._data = bytearray([ERASED]) * FLASH_SIZE
        return self._data

    @property
    def data(self) -> bytes | bytearray:
        """All 4 MiB, as the chip reads back."""
        return self._bytes()

    def check(self, offset: int, size: int) -> bool:
        """True when [offset, offset + size) lies inside the flash."""
        return 0 <= offset and 0 <= size and offset + size <= FLASH_SIZE

    def read(self, offset: int, size: int) -> bytes:
        if self._data is None:
            return bytes([ERASED]) * size
        return bytes(self._data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self._bytes()[offset:offset + len(data)] = data
        self.dirty = True

    def erase(self, offset: int = 0, size: int = FLASH_SIZE) -> None:
        if size <= 0:
            return
        if offset == 0 and size == FLASH_SIZE:
            self._data = None
        elif self._data is not None:
            self._data[offset:offset + size] = bytes([ERASED]) * size
        self.dirty = True

    def image_size(self) -> int:
        """The written image's length: up to the last byte that is not 0xFF."""
        data = self._data
        if data is None:
            return 0
        end = FLASH_SIZE
        while end > 0:  # compare 64 KiB at a time from the end: no copy of the flash
            start = max(0, end - SCAN)
            if data[start:end] != BLANK[:end - start]:
                return start + len(data[start:end].rstrip(bytes([ERASED])))
            end = start
        return 0

    def image(self) -> bytes:
        """The written image: the flash up to its last byte that is not 0xFF."""
        return bytes(self._data[:self.image_size()]) if self._data is not None else b""

    def image_id(self) -> str | None:
        """The first 12 hex digits of the written image's SHA-256; None when blank."""
        size = self.image_size()
        if not size:
            return None
        return hashlib.sha256(memoryview(self._data)[:size]).hexdigest()[:ID_DIGITS]


def load(path: str) -> FlashImage:
    """The flash kept in `path`; a blank one when the file does not exist yet.

    A shorter file is the start of the flash (the rest reads erased); a longer one is
    refused with ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(FLASH_SIZE + 1)
    except FileNotFoundError:
        return FlashImage()
    try:
        return FlashImage(data)
    except ValueError as exc:
        raise ValueError(f"flash file {path}: {exc}") from None


def check_path(path: str) -> None:
    """Fail early (ValueError) when `path` cannot hold the flash: refused at start,
    not at the first reset."""
    load(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"flash file {path}: no directory {directory}")


def save(flash: FlashImage, path: str) -> None:
    """Write the whole flash to `path` (atomically: a reader never sees half of it)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(flash.data)
    os.replace(tmp, path)
    flash.dirty = False
