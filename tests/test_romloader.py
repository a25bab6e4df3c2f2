"""The simulated ESP8266 serial loader (gateway/simulator/romloader.py), its flash
(flash.py) and its place in the link (link.py): bytes in, bytes out, no sockets.

tests/test_sim_esptool.py runs the real esptool against it."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

import pytest

from gateway.simulator import romloader as rl
from gateway.simulator.device import SimulatedDevice
from gateway.simulator.flash import FLASH_SIZE, FlashImage, load, save
from gateway.simulator.link import BOOT_NOISE, Link
from gateway.simulator.romloader import RomLoader, RunFirmware, SetBaud, SlipDecoder, slip_encode
from gateway.transports import create

# -- helpers: esptool's side of the wire ----------------------------------------------------


def request(op: int, data: bytes = b"", chk: int = 0, direction: int = 0) -> bytes:
    return slip_encode(struct.pack("<BBHI", direction, op, len(data), chk) + data)


def answers(out: list) -> list[tuple[int, int, bytes, int]]:
    """(op, value, data, status) of each answer frame in `out` (bytes items only)."""
    frames = SlipDecoder().feed(b"".join(x for x in out if isinstance(x, bytes)))
    result = []
    for f in frames:
        direction, op, size, value = struct.unpack_from("<BBHI", f)
        assert direction == 1 and size == len(f) - 8
        body = f[8:]
        result.append((op, value, body[:-2], struct.unpack(">H", body[-2:])[0]))
    return result


def one(loader: RomLoader, op: int, data: bytes = b"", chk: int = 0) -> tuple[int, bytes, int]:
    """Send one request; its single answer's (value, data, status)."""
    got = answers(loader.feed(request(op, data, chk)))
    assert len(got) == 1 and got[0][0] == op, got
    return got[0][1:]


def words(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


SYNC_DATA = b"\x07\x07\x12\x20" + b"\x55" * 32


def start_stub(loader: RomLoader) -> None:
    """esptool's run_stub(): upload (the bytes are not looked at), run, and the greeting."""
    code = os.urandom(100)
    assert one(loader, rl.MEM_BEGIN, words(len(code), 1, 0x1800, 0x4010E000))[2] == 0
    assert one(loader, rl.MEM_DATA, words(len(code), 0, 0, 0) + code, rl.checksum(code))[2] == 0
    out = loader.feed(request(rl.MEM_END, words(0, 0x4010E004)))
    assert answers(out[:1]) == [(rl.MEM_END, 0, b"", 0)]
    assert SlipDecoder().feed(out[1]) == [b"OHAI"] and loader.stub


@pytest.fixture
def stub() -> RomLoader:
    loader = RomLoader(FlashImage())
    start_stub(loader)
    return loader


def flash_file(loader: RomLoader, offset: int, image: bytes, block: int = 0x4000) -> None:
    """esptool's uncompressed write: FLASH_BEGIN, blocks padded with 0xFF, FLASH_END."""
    blocks = -(-len(image) // block)
    assert one(loader, rl.FLASH_BEGIN, words(len(image), blocks, block, offset, 0))[2] == 0
    for seq in range(blocks):
        data = image[seq * block:(seq + 1) * block]
        data += b"\xff" * (block - len(data))
        assert one(loader, rl.FLASH_DATA, words(len(data), seq, 0, 0) + data, rl.checksum(data))[2] == 0
    assert one(loader, rl.FLASH_END, words(1))[2] == 0


# -- SLIP ----------------------------------------------------------------------------------------


def test_slip_frames_split_at_every_offset_decode_the_same():
    payloads = [b"\x00\x08\x24\x00" + bytes([0xC0, 0xDB, 0xDC, 0xDD]) * 3, b"OHAI", bytes(range(256))]
    stream = b"noise\r\n" + b"".join(slip_encode(p) for p in payloads) + b"tail"
    for cut in range(len(stream) + 1):
        decoder = SlipDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == payloads, cut
    decoder = SlipDecoder()  # and a byte at a time
    assert [f for b in stream for f in decoder.feed(bytes([b]))] == payloads


def test_slip_drops_bad_escapes_overlong_frames_and_ignores_what_lies_between():
    decoder = SlipDecoder(limit=10)
    assert decoder.feed(b"\xc0ab\xdb\x01cd\xc0") == []  # a bad escape: dropped whole
    assert decoder.feed(b"\xc0" + b"x" * 11 + b"\xc0") == []  # too long: dropped whole
    assert decoder.feed(b"junk\xc0ok\xc0junk\xc0ok2\xc0") == [b"ok", b"ok2"]
    assert decoder.feed(b"\xc0\xc0") == []  # an empty frame is none; its second C0 opens a frame
    assert decoder.feed(b"ok3\xc0\xc0ok4\xc0") == [b"ok3", b"ok4"]
    # A reader out of step (inside a stale frame) finds it again at the next request.
    decoder = SlipDecoder()
    stale = decoder.feed(b"\xc0half")
    assert stale == [] and decoder.feed(b"\xc0A\xc0" + b"\xc0B\xc0") == [b"half", b"B"]
    assert slip_encode(b"\xc0\xdb") == b"\xc0\xdb\xdc\xdb\xdd\xc0"


# -- the ROM ---------------------------------------------------------------------------------------


def test_rom_sync_answers_eight_times_with_the_rom_value():
    out = RomLoader(FlashImage()).feed(b"\x55\x55" + request(rl.SYNC, SYNC_DATA))
    assert answers(out) == [(rl.SYNC, 0x20120707, b"", 0)] * 8


def test_rom_registers_chip_magic_mac_crystal_and_flash_id():
    rom = RomLoader(FlashImage(), uart_baud=115200)
    assert one(rom, rl.READ_REG, words(0x40001000)) == (0xFFF0C101, b"", 0)
    efuse = [one(rom, rl.READ_REG, words(0x3FF00050 + 4 * i))[0] for i in range(4)]
    mac0, mac1, _, mac3 = efuse
    # esptool's ESP8266ROM.read_mac() and get_crystal_freq():
    mac = ((mac3 >> 16) & 0xFF, (mac3 >> 8) & 0xFF, mac3 & 0xFF, (mac1 >> 8) & 0xFF, mac1 & 0xFF, mac0 >> 24)
    assert bytes(mac) == rl.DEFAULT_MAC and not efuse[0] & (1 << 4) and not efuse[2] & (1 << 16)
    assert round(115200 * one(rom, rl.READ_REG, words(0x60000014))[0] / 1e6 / 2) == 26
    # esptool's run_spiflash_command(0x9f, read_bits=24) on the ESP8266's SPI registers
    for addr, value in ((0x60000220, 23 << 8), (0x6000021C, 1 << 31 | 1 << 28), (0x60000224, 7 << 28 | 0x9F),
                        (0x60000240, 0), (0x60000200, 1 << 18)):
        assert one(rom, rl.WRITE_REG, words(addr, value, 0xFFFFFFFF, 0))[2] == 0
    assert one(rom, rl.READ_REG, words(0x60000200))[0] & (1 << 18) == 0  # done at once
    assert one(rom, rl.READ_REG, words(0x60000240))[0] == 0x1640EF  # Winbond, 4 MiB


def test_rom_refuses_what_only_the_stub_knows_and_malformed_requests():
    rom = RomLoader(FlashImage())
    for op in (rl.GET_SECURITY_INFO, rl.SPI_FLASH_MD5, rl.ERASE_FLASH, 0x77):
        assert one(rom, op, words(0, 0, 0, 0)) == (0, b"", 0x0105)
    assert one(rom, rl.READ_REG, b"\x00\x10") == (0, b"", 0x0105)  # wrong length for READ_REG
    bad = struct.pack("<BBHI", 0, rl.READ_REG, 10, 0) + b"12345"  # the length field lies
    assert answers(rom.feed(slip_encode(bad))) == [(rl.READ_REG, 0, b"", 0x0105)]
    assert answers(rom.feed(slip_encode(b"\x00\x0a\x04"))) == [(rl.READ_REG, 0, b"", 0x0105)]  # short
    assert one(rom, rl.READ_REG, words(0x40001000)) == (0xFFF0C101, b"", 0)  # still answering


def test_rom_checks_block_checksums_and_stays_the_rom_until_told_to_run():
    rom = RomLoader(FlashImage())
    assert one(rom, rl.MEM_DATA, words(4, 0, 0, 0) + b"abcd", rl.checksum(b"abcd"))[2] == 0x0105  # no BEGIN
    assert one(rom, rl.MEM_BEGIN, words(4, 1, 0x1800, 0x40100000))[2] == 0
    assert one(rom, rl.MEM_DATA, words(4, 0, 0, 0) + b"abcd", 0x12)[2] == 0x0107
    assert one(rom, rl.MEM_DATA, words(4, 0, 0, 0) + b"abcd", rl.checksum(b"abcd"))[2] == 0
    assert answers(rom.feed(request(rl.MEM_END, words(1, 0)))) == [(rl.MEM_END, 0, b"", 0)]
    assert not rom.stub  # flag 1: do not run
    start_stub(rom)


def test_rom_flashes_too_and_its_flash_end_boots_the_firmware():
    flash = FlashImage()
    rom = RomLoader(flash)
    image = os.urandom(5000)
    blocks = 5
    assert one(rom, rl.FLASH_BEGIN, words(8192, blocks, 0x400, 0))[2] == 0
    for seq in range(blocks):
        data = image[seq * 0x400:(seq + 1) * 0x400]
        data += b"\xff" * (0x400 - len(data))
        assert one(rom, rl.FLASH_DATA, words(0x400, seq, 0, 0) + data, rl.checksum(data))[2] == 0
    out = rom.feed(request(rl.FLASH_END, words(1)))
    assert answers(out) == [(rl.FLASH_END, 0, b"", 0)] and out[-1] == RunFirmware()
    assert flash.image() == image.rstrip(b"\xff")


# -- the stub ----------------------------------------------------------------------------------------


def test_stub_sync_answers_zero_and_unknown_commands_are_invalid(stub):
    assert answers(stub.feed(request(rl.SYNC, SYNC_DATA))) == [(rl.SYNC, 0, b"", 0)] * 8
    assert one(stub, 0x77) == (0, b"", 0xC300)
    assert one(stub, rl.GET_SECURITY_INFO) == (0, b"", 0xFF00)
    assert one(stub, rl.READ_REG, words(1), ) [2] == 0
    assert answers(stub.feed(request(rl.READ_REG, words(0x40001000), direction=1))) == [(rl.READ_REG, 0, b"", 0xC300)]
    assert one(stub, rl.SPI_ATTACH, words(0)) == (0, b"", 0)
    assert one(stub, rl.SPI_SET_PARAMS, words(0, FLASH_SIZE, 0x10000, 4096, 256, 0xFFFF)) == (0, b"", 0)
    assert one(stub, rl.SPI_SET_PARAMS, words(0))[2] == 0xC000


def test_stub_writes_an_image_whose_id_is_its_sha256(stub):
    image = os.urandom(40000) + b"\x01"
    assert stub.flash.image_id() is None
    flash_file(stub, 0, image)
    assert stub.flash.image() == image
    assert stub.flash.image_id() == hashlib.sha256(image).hexdigest()[:12]
    value, md5, status = one(stub, rl.SPI_FLASH_MD5, words(0, len(image), 0, 0))
    assert (md5, status) == (hashlib.md5(image).digest(), 0)


def test_stub_inflates_compressed_blocks(stub):
    image = (b"0123456789abcdef" * 3000 + os.urandom(3000)) * 4
    packed = zlib.compress(image, 9)
    blocks = -(-len(packed) // 0x4000)
    assert one(stub, rl.FLASH_DEFL_BEGIN, words(len(image), blocks, 0x4000, 0x1000, 0))[2] == 0
    for seq in range(blocks):
        data = packed[seq * 0x4000:(seq + 1) * 0x4000]
        assert one(stub, rl.FLASH_DEFL_DATA, words(len(data), seq, 0, 0) + data, rl.checksum(data))[2] == 0
    assert one(stub, rl.FLASH_DEFL_END, words(1))[2] == 0
    assert stub.flash.read(0x1000, len(image)) == image
    assert stub.flash.image() == b"\xff" * 0x1000 + image


def test_stub_refuses_bad_blocks_and_reports_late_failures_on_the_next_command(stub):
    assert one(stub, rl.FLASH_DATA, words(4, 0, 0, 0) + b"abcd", rl.checksum(b"abcd"))[2] == 0xC600
    assert one(stub, rl.FLASH_END, words(1))[2] == 0xC600
    assert one(stub, rl.FLASH_BEGIN, words(8, 1, 0x4000, 0))[2] == 0
    assert one(stub, rl.FLASH_DATA, words(4, 0, 0, 0) + b"abcd", 0x99)[2] == 0xC100  # bad checksum
    assert one(stub, rl.FLASH_DATA, words(5, 0, 0, 0) + b"abcd", rl.checksum(b"abcd"))[2] == 0xC900
    assert stub.flash.image() == b""  # nothing written
    assert one(stub, rl.FLASH_END, words(1))[2] == 0xC000  # 8 bytes announced, none written
    # More than announced, found while inflating: the block is answered, and the failure
    # is the next command's answer.
    packed = zlib.compress(b"x" * 20)
    assert one(stub, rl.FLASH_DEFL_BEGIN, words(10, 1, 0x4000, 0))[2] == 0
    assert one(stub, rl.FLASH_DEFL_DATA, words(len(packed), 0, 0, 0) + packed, rl.checksum(packed))[2] == 0
    assert one(stub, rl.READ_REG, words(0x40001000)) == (0, b"", 0xC900)
    assert one(stub, rl.READ_REG, words(0x40001000)) == (0xFFF0C101, b"", 0)
    assert one(stub, rl.FLASH_BEGIN, words(4096, 1, 0x4000, FLASH_SIZE - 100))[2] == 0xC400  # erase past the end
    # A broken deflate stream, found after the block was answered.
    assert one(stub, rl.FLASH_DEFL_BEGIN, words(100, 1, 0x4000, 0))[2] == 0
    assert one(stub, rl.FLASH_DEFL_DATA, words(4, 0, 0, 0) + b"nope", rl.checksum(b"nope"))[2] == 0
    assert one(stub, rl.FLASH_DEFL_END, words(1))[2] == 0xC700


def test_stub_reads_flash_a_frame_per_acknowledgement_then_the_digest(stub):
    image = os.urandom(10000)
    stub.flash.write(0x2000, image)
    out = stub.feed(request(rl.READ_FLASH, words(0x2000, len(image), 4096, 64)))
    assert answers(out[:1]) == [(rl.READ_FLASH, 0, b"", 0)]
    got = SlipDecoder().feed(b"".join(out[1:]))
    while len(got[-1]) != 16 or sum(map(len, got)) <= len(image):
        assert len(got) < 10, "one frame per acknowledgement"
        frames = SlipDecoder().feed(b"".join(stub.feed(slip_encode(words(sum(map(len, got)))))))
        assert len(frames) == 1
        got += frames
    assert b"".join(got[:-1]) == image and got[-1] == hashlib.md5(image).digest()
    assert [len(f) for f in got] == [4096, 4096, 1808, 16]
    assert one(stub, rl.READ_REG, words(0x40001000))[0] == 0xFFF0C101  # back to commands
    assert one(stub, rl.READ_FLASH, words(0, 10, 8192, 1))[2] == 0xC000  # packets of at most 4096


def test_stub_erases_regions_on_sector_boundaries_and_the_whole_chip(stub):
    stub.flash.write(0, b"\x00" * 0x3000)
    assert one(stub, rl.ERASE_REGION, words(0x1000, 0x1001))[2] == 0xC000
    assert one(stub, rl.ERASE_REGION, words(0x1000, 0x2000))[2] == 0
    assert stub.flash.image() == b"\x00" * 0x1000
    assert one(stub, rl.ERASE_REGION, words(FLASH_SIZE, 0x1000))[2] == 0xC400
    assert one(stub, rl.ERASE_FLASH)[2] == 0
    assert stub.flash.image_id() is None


def test_stub_changes_baud_after_answering_and_runs_user_code_without_an_answer(stub):
    out = stub.feed(request(rl.CHANGE_BAUDRATE, words(460800, 115200)))
    assert answers(out) == [(rl.CHANGE_BAUDRATE, 0, b"", 0)] and out[-1] == SetBaud(460800)
    assert stub.feed(request(rl.RUN_USER_CODE)) == [RunFirmware()]


# -- the flash image -----------------------------------------------------------------------------


def test_flash_file_round_trip_and_limits(tmp_path):
    path = str(tmp_path / "flash.bin")
    flash = load(path)  # missing: blank
    assert flash.image_id() is None
    flash.write(0x100, b"fw")
    save(flash, path)
    assert os.path.getsize(path) == FLASH_SIZE and not flash.dirty
    assert load(path).image() == b"\xff" * 0x100 + b"fw"
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="flash file .*at most 4194304 bytes"):
        load(path)


# -- in the link: pacing, baud changes, the boot into the new image --------------------------------


def drain(link: Link) -> bytes:
    out = b""
    while (data := link.send()):
        out += data
    return out


def test_link_routes_bytes_to_the_loader_and_paces_input_and_output():
    now = [100.0]
    link = Link(SimulatedDevice(0, clock=lambda: now[0]), baud=115200, clock=lambda: now[0], bootloader=True)
    sync = request(rl.SYNC, SYNC_DATA)
    link.receive(sync)
    arrived = len(sync) / 11520
    assert link.send() == b"" and link.wait() == pytest.approx(arrived)  # still arriving
    now[0] += arrived
    out = b""
    while len(answers([out])) < 8:
        out += link.send()
        now[0] += link.wait() or 0
    assert answers([out]) == [(rl.SYNC, 0x20120707, b"", 0)] * 8
    # The last answer starts once the request is in and the 7 before it are out.
    assert now[0] - 100 == pytest.approx((len(sync) + len(out) * 7 / 8) / 11520)


def test_link_switches_rate_after_change_baudrate_and_boots_the_new_image():
    now = [0.0]
    saved = []
    link = Link(SimulatedDevice(0, clock=lambda: now[0]), baud=115200, clock=lambda: now[0], bootloader=True,
                save_flash=lambda flash: saved.append(flash.image_id()))
    start_stub(link.loader)
    link.receive(request(rl.CHANGE_BAUDRATE, words(921600, 115200)))
    out = b""
    while len(answers([out])) < 1:
        assert link.rate == 11520  # the answer goes at the old rate
        out += link.send()
        now[0] += link.wait() or 0
    assert link.rate == 92160  # switched as soon as the answer was out
    md5 = request(rl.SPI_FLASH_MD5, words(0, 4096, 0, 0))
    link.receive(md5)  # the next request arrives at the new rate
    assert link.wait() == pytest.approx(len(md5) / 92160)
    now[0] += link.wait()
    assert answers([drain(link)])[0][3] == 0
    image = os.urandom(3000)
    link.loader.flash.write(0, image)
    link.receive(request(rl.RUN_USER_CODE))
    out = b""
    deadline = now[0] + 2
    while b"boot fw=" not in out and now[0] < deadline:
        out += link.send()
        now[0] += max(link.wait() or 0, 0.001)
    fw = hashlib.sha256(image).hexdigest()[:12]
    assert out == BOOT_NOISE + f"ready\nboot fw={fw}\n".encode()
    assert link.rate == 11520 and not link.in_bootloader and saved == [fw]
    link.receive(b"GET fw\n")
    assert drain(link) == b""  # paced: not yet
    now[0] += 1
    assert drain(link) == f"fw={fw}\n".encode()


def test_a_blank_flash_boots_as_before_and_get_fw_says_none():
    link = Link(SimulatedDevice(0))
    link.set_signals(dtr=False, rts=True)
    link.set_signals(rts=False)
    assert drain(link) == BOOT_NOISE + b"ready\n"
    link.receive(b"GET fw\n")
    assert drain(link) == b"fw=none\n"


def test_sim_transport_records_baudrate_purges_input_and_keeps_its_flash(tmp_path):
    path = tmp_path / "flash.bin"
    t = create(f"sim://?interval=0&flash={path}")
    assert t.baudrate == 115200
    t.open()
    t.set_signals(dtr=False, rts=True)
    t.set_signals(dtr=True, rts=False)  # EN up with GPIO0 low: the ROM loader
    t.set_signals(dtr=False, rts=False)
    t.set_baudrate(74880)
    assert t.baudrate == 74880 and t.link.loader.uart_baud == 74880
    t.purge(input=True, output=True)  # the boot noise is gone
    t.write(request(rl.READ_REG, words(0x40001000)))
    assert answers([t.read(timeout=1)]) == [(rl.READ_REG, 0xFFF0C101, b"", 0)]
    start_stub(t.link.loader)
    t.link.loader.flash.write(0, b"app")
    t.write(request(rl.RUN_USER_CODE))
    got = b""
    while b"boot fw=" not in got:
        data = t.read(timeout=1)
        assert data
        got += data
    assert f"boot fw={hashlib.sha256(b'app').hexdigest()[:12]}".encode() in got
    assert load(str(path)).image() == b"app"  # saved at the boot
    t.open()  # a reopen: the configured rate, the same flash
    assert t.baudrate == 115200 and t.link.device.firmware == hashlib.sha256(b"app").hexdigest()[:12]
    t.close()
    with pytest.raises(ValueError, match="flash file .*no directory"):
        create(f"sim://?flash={tmp_path}/missing/flash.bin")


def test_esptools_classic_reset_one_line_at_a_time_reaches_the_loader():
    """esptool's ClassicReset (what it uses over RFC 2217) sets DTR, then RTS, each alone;
    the board reads GPIO0 a moment after EN rises, as the RC on a real board's EN allows."""
    now = [0.0]
    link = Link(SimulatedDevice(0, clock=lambda: now[0]), clock=lambda: now[0])
    link.set_signals(dtr=False)
    link.set_signals(rts=True)  # EN low
    now[0] += 0.1
    link.set_signals(dtr=True)  # both asserted: EN rises, GPIO0 not yet low
    assert not link.in_bootloader
    link.set_signals(rts=False)  # GPIO0 low, within the sampling delay
    assert link.in_bootloader and drain(link) == BOOT_NOISE  # no "ready"
    now[0] += 0.05
    link.set_signals(dtr=False)
    link.receive(request(rl.SYNC, SYNC_DATA))
    assert answers([drain(link)]) == [(rl.SYNC, 0x20120707, b"", 0)] * 8
    # Later than the delay, GPIO0 low changes nothing: the firmware runs.
    link.set_signals(dtr=False, rts=True)
    link.set_signals(rts=False)
    now[0] += 0.1
    link.set_signals(dtr=True)
    assert not link.in_bootloader and drain(link) == BOOT_NOISE + b"ready\n"


def test_a_new_connection_forgets_a_half_received_frame():
    link = Link(SimulatedDevice(0), bootloader=True)
    link.receive(b"\xc0\x00\x08\x24")  # a client that went away mid-request
    link.reset()  # serve.py: a new TCP connection
    link.receive(request(rl.SYNC, SYNC_DATA))
    assert answers([drain(link)]) == [(rl.SYNC, 0x20120707, b"", 0)] * 8


def test_the_standalone_simulator_refuses_a_flash_file_it_cannot_write(tmp_path):
    from gateway.simulator.serve import SimulatorServer

    with pytest.raises(ValueError, match="no directory"):
        SimulatorServer("tcp://127.0.0.1:0", flash=str(tmp_path / "nope" / "flash.bin"))


def test_stub_takes_a_last_compressed_block_that_holds_only_the_zlib_checksum(stub):
    image = os.urandom(1000) * 3
    packed = zlib.compress(image, 9)
    assert one(stub, rl.FLASH_DEFL_BEGIN, words(len(image), 2, 0x4000, 0, 0))[2] == 0
    for seq, data in enumerate((packed[:-4], packed[-4:])):
        assert one(stub, rl.FLASH_DEFL_DATA, words(len(data), seq, 0, 0) + data, rl.checksum(data))[2] == 0
    assert one(stub, rl.FLASH_DEFL_END, words(1))[2] == 0
    assert stub.flash.image() == image
