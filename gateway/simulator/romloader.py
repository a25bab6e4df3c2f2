"""The ESP8266's serial loader, simulated with no I/O: bytes in, bytes (and actions) out.

An ESP8266 reset with GPIO0 low runs its ROM's serial loader; esptool talks to it in
SLIP frames, uploads its flasher stub into RAM with MEM_BEGIN/MEM_DATA/MEM_END, and the
stub, once running, says `OHAI` and answers the faster commands esptool uses to flash.
`RomLoader` plays both: it starts as the ROM and becomes the stub at a MEM_END that asks
to run what was uploaded (the code itself is accepted and not run: any upload is taken
for esptool's stub). It holds no socket and no clock; a driver (link.py) feeds it what
the host sent and sends what it returns, at the link's pace.

The wire format (esptool's `loader.py`): a request is `00 op len16 chk32 data`, an
answer `01 op len16 value32 data status`, little-endian, each in a SLIP frame. The
status is 2 bytes: `00 00` for success; the ROM's failures are `01 err` (err 05: a
malformed or unknown request, 07: a bad checksum, 06: it failed), the stub's a 16-bit
big-endian code (C000 bad length, C100 bad checksum, C300 unknown command, C400 failed
SPI operation, C600 not in flash mode, C700 inflate error, C900 too much data).

What each answers (where the ROM and the stub differ, esptool 5's stub,
esp-flasher-stub 1.4, is followed; the ROM is kept to what esptool asks of it):

- ROM: SYNC (8 answers, value 0x20120707), READ_REG, WRITE_REG, MEM_BEGIN/DATA/END,
  FLASH_BEGIN/DATA/END (`--no-stub` flashing; FLASH_END leaves for the firmware);
  anything else `01 05`.
- stub: the same plus SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE (answered at the old
  rate, then `SetBaud`), FLASH_DEFL_BEGIN/DATA/END (zlib), SPI_FLASH_MD5 (16 raw
  bytes), READ_FLASH (4096-byte frames, each sent when the previous one is
  acknowledged, then the MD5), ERASE_FLASH, ERASE_REGION (sector-aligned),
  RUN_USER_CODE (no answer: `RunFirmware`). SYNC answers 8 times with value 0. A
  FLASH_END never reboots the stub. Like the stub, a failure found after a command was
  answered (writing past the flash, a bad deflate stream) is the answer to the next one.

Registers: the chip-detect magic 0xfff0c101 at 0x40001000, the efuse MAC words, the
UART clock divider (the ROM's autobaud: 52 MHz / the host's baud, which esptool reads
back as a 26 MHz crystal), and the SPI peripheral at 0x60000200 well enough for
esptool's `run_spiflash_command`: RDID (0x9f) reads a Winbond W25Q32 (ef 40 16: 4 MiB),
status reads 0, and SPI_CMD's USR bit clears as soon as it is set.

Bytes between frames are ignored, as the ROM and the stub do (the gateway's line
traffic before a flash, boot noise echoed back). A frame with a bad escape or longer
than MAX_FRAME is dropped unanswered, as the stub does.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from .flash import FLASH_SIZE, SECTOR, FlashImage

END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
MAX_FRAME = 0x4000 + 64  # the stub's FLASH_WRITE_SIZE, a header and some room
HEADER = struct.Struct("<BBHI")  # direction, op, data length, checksum or value
CHECKSUM_SEED = 0xEF

# Opcodes (esptool's ESPLoader.ESP_CMDS).
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END, SPI_FLASH_MD5 = 0x10, 0x11, 0x12, 0x13
GET_SECURITY_INFO = 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3

# Status codes, as the 2 status bytes read big-endian.
OK = 0x0000
ROM_INVALID, ROM_FAILED, ROM_BAD_CHECKSUM = 0x0105, 0x0106, 0x0107
BAD_DATA_LEN, BAD_CHECKSUM, INVALID_COMMAND = 0xC000, 0xC100, 0xC300
FAILED_SPI_OP, NOT_IN_FLASH_MODE, INFLATE_ERROR = 0xC400, 0xC600, 0xC700
NOT_ENOUGH_DATA, TOO_MUCH_DATA, NOT_IMPLEMENTED = 0xC800, 0xC900, 0xFF00

SYNC_VALUE = 0x20120707  # the ROM's; the stub answers 0, which is how esptool tells them apart
SYNC_ANSWERS = 8
GREETING = b"OHAI"
READ_PACKET_MAX = 4096

# Registers.
CHIP_MAGIC_ADDR, CHIP_MAGIC = 0x40001000, 0xFFF0C101
EFUSE_BASE = 0x3FF00050  # four words; MAC0 0x50, MAC1 0x54, MAC3 0x5C
UART_CLKDIV = 0x60000014
APB_HZ = 52_000_000  # 26 MHz crystal, times esptool's XTAL_CLK_DIVIDER for the ESP8266
SPI_BASE = 0x60000200
SPI_CMD, SPI_USR2, SPI_W0 = SPI_BASE + 0x00, SPI_BASE + 0x24, SPI_BASE + 0x40
SPI_CMD_USR = 1 << 18
FLASH_JEDEC = 0x1640EF  # Winbond (ef), W25Q32 (40 16): 4 MiB, as W0 reads it
DEFAULT_MAC = bytes.fromhex("5ccf7f0a1b2c")  # an Espressif OUI


@dataclass(frozen=True)
class SetBaud:
    """The loader's UART now runs at `baud` (after the bytes before it are sent)."""
    baud: int


@dataclass(frozen=True)
class RunFirmware:
    """The loader is left: the board boots the firmware in its flash."""


Output = bytes | SetBaud | RunFirmware


def slip_encode(payload: bytes) -> bytes:
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class SlipDecoder:
    """SLIP frames out of a byte stream, as the stub reads them: C0 opens a frame and C0
    closes it; bytes outside a frame are ignored; a bad escape or a frame longer than
    `limit` is dropped. An empty frame (C0 C0) is none, and its second C0 opens the next
    frame (RFC 1055's way: a reader that lost step finds it again at the next frame)."""

    def __init__(self, limit: int = MAX_FRAME):
        self.limit = limit
        self._frame: bytearray | None = None  # None: outside a frame
        self._escaping = False
        self._dropping = False  # inside a frame being dropped, until its closing C0

    def reset(self) -> None:
        self._frame, self._escaping, self._dropping = None, False, False

    def feed(self, data: bytes) -> list[bytes]:
        frames = []
        i, n = 0, len(data)
        while i < n:
            if self._frame is None and not self._dropping:
                start = data.find(b"\xc0", i)
                if start < 0:
                    return frames
                self._frame, i = bytearray(), start + 1
                continue
            if self._escaping:
                self._escaping = False
                b = data[i]
                i += 1
                if b in (ESC_END, ESC_ESC):
                    self._put(END if b == ESC_END else ESC)
                else:
                    self._drop()
                continue
            # Copy the run of plain bytes up to the next C0 or DB in one step.
            stop = n
            for special in (b"\xc0", b"\xdb"):
                at = data.find(special, i, stop)
                if at >= 0:
                    stop = at
            if stop > i:
                if not self._dropping:
                    self._put(data[i:stop])
                i = stop
                continue
            b = data[i]
            i += 1
            if b == ESC:
                self._escaping = not self._dropping
            elif self._dropping:
                self._dropping = False
            elif self._frame:
                frames.append(bytes(self._frame))
                self._frame = None
            # else: an empty frame (C0 C0) is none, and the second C0 opens the next one
        return frames

    def _put(self, data: bytes | int) -> None:
        if self._dropping:
            return
        if isinstance(data, int):
            self._frame.append(data)
        else:
            self._frame += data
        if len(self._frame) > self.limit:
            self._drop()

    def _drop(self) -> None:
        self._frame = None
        self._dropping = True


def checksum(data: bytes) -> int:
    """The ROM's checksum of a data block: 0xEF xor every byte."""
    state = CHECKSUM_SEED
    for b in data:
        state ^= b
    return state


def _words(data: bytes, count: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{count}I", data)


class _FlashWrite:
    """A FLASH_BEGIN or FLASH_DEFL_BEGIN in progress."""

    def __init__(self, offset: int, total: int, compressed: bool):
        self.offset = offset
        self.remaining = total  # bytes still to write (the stub's total_remaining)
        self.inflater = zlib.decompressobj() if compressed else None


class _FlashRead:
    """A READ_FLASH in progress: a frame at a time, each after the last was acknowledged."""

    def __init__(self, offset: int, size: int, packet: int):
        self.offset = offset
        self.remaining = size
        self.size = size
        self.packet = packet
        self.md5 = hashlib.md5()


class RomLoader:
    """The ROM loader, then the stub: `feed(bytes)` returns what to send and do, in order."""

    def __init__(self, flash: FlashImage, uart_baud: int = 115200, mac: bytes = DEFAULT_MAC):
        self.flash = flash
        self.uart_baud = uart_baud  # the rate the ROM autobauded to, or the stub switched to
        self.mac = mac
        self.stub = False  # False: the ROM answers; True: the stub does
        self._slip = SlipDecoder()
        self._regs: dict[int, int] = {}
        self._mem_remaining: int | None = None  # MEM_BEGIN .. MEM_END: bytes still expected
        self._write: _FlashWrite | None = None
        self._read: _FlashRead | None = None
        self._carried = OK  # the stub: a failure after an answer, given to the next command
        self._out: list[Output] = []

    # -- input ---------------------------------------------------------------------------

    def reset_input(self) -> None:
        """Forget a half-received frame (a new connection to the simulator)."""
        self._slip.reset()

    def feed(self, data: bytes) -> list[Output]:
        for frame in self._slip.feed(data):
            if self._read is not None:
                self._read_ack(frame)
            else:
                self._request(frame)
        out, self._out = self._out, []
        return out

    def _request(self, frame: bytes) -> None:
        if len(frame) < HEADER.size:
            op = frame[1] if len(frame) > 1 else 0
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        direction, op, size, chk = HEADER.unpack_from(frame)
        data = frame[HEADER.size:]
        if direction != 0x00:
            self._answer(op, status=self._code(INVALID_COMMAND))
            return
        if len(data) != size:
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        if self._carried != OK:
            self._answer(op, status=self._carried)
            self._carried = OK
            return
        handler = (STUB_COMMANDS if self.stub else ROM_COMMANDS).get(op)
        if handler is None:
            if op == GET_SECURITY_INFO and self.stub:
                self._answer(op, status=NOT_IMPLEMENTED)
            else:
                self._answer(op, status=self._code(INVALID_COMMAND))
            return
        handler(self, op, data, chk)

    # -- output --------------------------------------------------------------------------

    def _code(self, stub_code: int, rom_code: int = ROM_INVALID) -> int:
        """A failure's status: the stub's code, or the ROM's."""
        return stub_code if self.stub else rom_code

    def _answer(self, op: int, value: int = 0, data: bytes = b"", status: int = OK) -> None:
        if status != OK:
            data = b""
        body = data + struct.pack(">H", status)
        self._out.append(slip_encode(HEADER.pack(0x01, op, len(body), value) + body))

    # -- registers -----------------------------------------------------------------------

    def read_register(self, addr: int) -> int:
        if addr == CHIP_MAGIC_ADDR:
            return CHIP_MAGIC
        if EFUSE_BASE <= addr < EFUSE_BASE + 16 and addr % 4 == 0:
            return self._efuse_words()[(addr - EFUSE_BASE) // 4]
        if addr == UART_CLKDIV:
            return round(APB_HZ / self.uart_baud) if self.uart_baud else 0
        return self._regs.get(addr, 0)

    def _efuse_words(self) -> tuple[int, int, int, int]:
        """What esptool's ESP8266ROM.read_mac() reads back as `mac` (MAC3 holds the OUI);
        no ESP8285 bits set."""
        m = self.mac
        mac0 = m[5] << 24
        mac1 = (m[3] << 8) | m[4]
        mac3 = (m[0] << 16) | (m[1] << 8) | m[2]
        return mac0, mac1, 0, mac3

    def _write_register(self, addr: int, value: int, mask: int) -> None:
        if mask != 0xFFFFFFFF:
            value = (value & mask) | (self.read_register(addr) & ~mask & 0xFFFFFFFF)
        self._regs[addr] = value
        if addr == SPI_CMD and value & SPI_CMD_USR:
            self._spi_user_command()

    def _spi_user_command(self) -> None:
        command = self._regs.get(SPI_USR2, 0) & 0xFF
        if command == 0x9F:  # RDID
            self._regs[SPI_W0] = FLASH_JEDEC
        elif command in (0x05, 0x35, 0x15):  # RDSR, RDSR2, RDSR3
            self._regs[SPI_W0] = 0
        self._regs[SPI_CMD] &= ~SPI_CMD_USR

    # -- commands of the ROM and the stub -------------------------------------------------

    def _sync(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 36:
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        value = 0 if self.stub else SYNC_VALUE
        for _ in range(SYNC_ANSWERS):
            self._answer(op, value)

    def _read_reg(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 4:
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        self._answer(op, self.read_register(_words(data, 1)[0]))

    def _write_reg(self, op: int, data: bytes, chk: int) -> None:
        if not data or len(data) % 16:
            self._answer(op, status=self._code(NOT_ENOUGH_DATA))
            return
        for i in range(0, len(data), 16):
            addr, value, mask, _delay = struct.unpack_from("<4I", data, i)
            self._write_register(addr, value, mask)
        self._answer(op)

    def _mem_begin(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 16:
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        self._mem_remaining = _words(data, 1)[0]
        self._answer(op)

    def _mem_data(self, op: int, data: bytes, chk: int) -> None:
        if len(data) < 16:
            self._answer(op, status=self._code(NOT_ENOUGH_DATA))
            return
        if self._mem_remaining is None:
            self._answer(op, status=self._code(NOT_IN_FLASH_MODE))
            return
        size = _words(data, 1)[0]
        block = data[16:]
        if size != len(block) or size > self._mem_remaining:
            self._answer(op, status=self._code(TOO_MUCH_DATA))
            return
        if not self.stub and checksum(block) != chk:
            self._answer(op, status=ROM_BAD_CHECKSUM)
            return
        self._mem_remaining -= size  # the code is accepted, and not run
        self._answer(op)

    def _mem_end(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 8:
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        if self._mem_remaining is None:
            self._answer(op, status=self._code(NOT_IN_FLASH_MODE))
            return
        self._mem_remaining = None
        self._answer(op)
        run_it, _entry = _words(data, 2)
        if run_it == 0:  # 0: jump to the entry point, which is esptool's stub
            self._start_stub()

    def _start_stub(self) -> None:
        self.stub = True
        self._write = None
        self._carried = OK
        self._out.append(slip_encode(GREETING))

    def _flash_begin(self, op: int, data: bytes, chk: int) -> None:
        compressed = op == FLASH_DEFL_BEGIN
        if len(data) not in ((16, 20) if self.stub else (16,)):
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        size, _blocks, _block_size, offset = _words(data, 4)
        # The stub takes the image's size, the ROM an erase size (esptool's
        # get_erase_size works around the ROM's erase bug); both erase the sectors covered.
        start, end = offset - offset % SECTOR, -(-(offset + size) // SECTOR) * SECTOR
        if not self.flash.check(start, end - start):
            self._answer(op, status=self._code(FAILED_SPI_OP, ROM_FAILED))
            return
        self.flash.erase(start, end - start)
        self._write = _FlashWrite(offset, size if self.stub else FLASH_SIZE - offset, compressed)
        self._answer(op)

    def _flash_data(self, op: int, data: bytes, chk: int) -> None:
        compressed = op == FLASH_DEFL_DATA
        if len(data) < 16:
            self._answer(op, status=self._code(BAD_DATA_LEN if compressed else NOT_ENOUGH_DATA))
            return
        write = self._write
        if write is None or (write.inflater is not None) != compressed:
            self._answer(op, status=self._code(NOT_IN_FLASH_MODE))
            return
        size = _words(data, 1)[0]
        block = data[16:]
        if size != len(block):
            self._answer(op, status=self._code(TOO_MUCH_DATA))
            return
        if checksum(block) != chk:
            self._answer(op, status=self._code(BAD_CHECKSUM, ROM_BAD_CHECKSUM))
            return
        if compressed:
            try:
                block = write.inflater.decompress(block)
            except zlib.error:
                block = None
        else:
            block = block[:write.remaining]
        if block is None:
            status = INFLATE_ERROR
        elif len(block) > write.remaining:
            status = TOO_MUCH_DATA
        elif not self.flash.check(write.offset, len(block)):
            status = self._code(FAILED_SPI_OP, ROM_FAILED)
        else:
            status = OK
            self.flash.write(write.offset, block)
            write.offset += len(block)
            write.remaining -= len(block)
        if self.stub:
            # The stub answers first and writes while the next block arrives: a failure
            # is the next command's answer.
            self._answer(op)
            self._carried = status
        else:
            self._answer(op, status=status)

    def _flash_end(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 4:
            self._answer(op, status=self._code(BAD_DATA_LEN))
            return
        write = self._write
        if write is None or (write.inflater is not None) != (op == FLASH_DEFL_END):
            self._answer(op, status=self._code(NOT_IN_FLASH_MODE))
            return
        if self.stub and write.remaining != 0:
            self._answer(op, status=BAD_DATA_LEN)
            return
        self._write = None
        self._answer(op)
        if not self.stub:  # the ROM leaves for the firmware; the stub stays
            self._out.append(RunFirmware())

    # -- commands of the stub only -------------------------------------------------------

    def _spi_attach(self, op: int, data: bytes, chk: int) -> None:
        self._answer(op, status=OK if len(data) == 4 else BAD_DATA_LEN)

    def _spi_set_params(self, op: int, data: bytes, chk: int) -> None:
        self._answer(op, status=OK if len(data) == 24 else BAD_DATA_LEN)

    def _change_baudrate(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 8:
            self._answer(op, status=BAD_DATA_LEN)
            return
        baud = _words(data, 1)[0]
        self._answer(op)
        if baud:
            self.uart_baud = baud
            self._out.append(SetBaud(baud))

    def _flash_md5(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 16:
            self._answer(op, status=BAD_DATA_LEN)
            return
        offset, size = _words(data, 2)
        if not self.flash.check(offset, size):
            self._answer(op, status=FAILED_SPI_OP)
            return
        self._answer(op, data=hashlib.md5(self.flash.read(offset, size)).digest())

    def _erase_flash(self, op: int, data: bytes, chk: int) -> None:
        self.flash.erase()
        self._answer(op)

    def _erase_region(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 8:
            self._answer(op, status=BAD_DATA_LEN)
            return
        offset, size = _words(data, 2)
        if offset % SECTOR or size % SECTOR:
            self._answer(op, status=BAD_DATA_LEN)
            return
        if not self.flash.check(offset, size):
            self._answer(op, status=FAILED_SPI_OP)
            return
        self.flash.erase(offset, size)
        self._answer(op)

    def _read_flash(self, op: int, data: bytes, chk: int) -> None:
        if len(data) != 16:
            self._answer(op, status=BAD_DATA_LEN)
            return
        offset, size, packet, _in_flight = _words(data, 4)
        if packet > READ_PACKET_MAX or (packet == 0 and size):
            self._answer(op, status=BAD_DATA_LEN)
            return
        self._answer(op)
        if not self.flash.check(offset, size):
            self._carried = FAILED_SPI_OP  # found while reading, after the answer
            return
        self._read = _FlashRead(offset, size, packet)
        self._send_read_packet()

    def _send_read_packet(self) -> None:
        read = self._read
        if read.remaining:
            n = min(read.packet, read.remaining)
            chunk = self.flash.read(read.offset, n)
            read.md5.update(chunk)
            read.offset += n
            read.remaining -= n
            self._out.append(slip_encode(chunk))

    def _read_ack(self, frame: bytes) -> None:
        read = self._read
        if len(frame) == 4:
            acked = struct.unpack("<I", frame)[0]
            if read.remaining:
                self._send_read_packet()
                return
            if acked < read.size:
                return  # the last frame is not acknowledged yet
        # All acknowledged; or a frame that is no acknowledgement, at which the stub
        # stops and sends the digest of what it sent.
        self._out.append(slip_encode(read.md5.digest()))
        self._read = None

    def _run_user_code(self, op: int, data: bytes, chk: int) -> None:
        self._out.append(RunFirmware())  # no answer


ROM_COMMANDS = {
    SYNC: RomLoader._sync,
    READ_REG: RomLoader._read_reg,
    WRITE_REG: RomLoader._write_reg,
    MEM_BEGIN: RomLoader._mem_begin,
    MEM_DATA: RomLoader._mem_data,
    MEM_END: RomLoader._mem_end,
    FLASH_BEGIN: RomLoader._flash_begin,
    FLASH_DATA: RomLoader._flash_data,
    FLASH_END: RomLoader._flash_end,
}

STUB_COMMANDS = {
    **ROM_COMMANDS,
    SPI_ATTACH: RomLoader._spi_attach,
    SPI_SET_PARAMS: RomLoader._spi_set_params,
    CHANGE_BAUDRATE: RomLoader._change_baudrate,
    FLASH_DEFL_BEGIN: RomLoader._flash_begin,
    FLASH_DEFL_DATA: RomLoader._flash_data,
    FLASH_DEFL_END: RomLoader._flash_end,
    SPI_FLASH_MD5: RomLoader._flash_md5,
    ERASE_FLASH: RomLoader._erase_flash,
    ERASE_REGION: RomLoader._erase_region,
    READ_FLASH: RomLoader._read_flash,
    RUN_USER_CODE: RomLoader._run_user_code,
}
